"""Figures: characters the font lacks are said once, in xaudit's words."""

from __future__ import annotations


def test_labels_the_figure_font_lacks_are_one_xaudit_warning_not_one_per_glyph(monkeypatch) -> None:
    import warnings

    from xaudit.models import XauditWarning
    from xaudit.reports import _figures

    monkeypatch.setattr(_figures, "_GLYPHS_SAID", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            fig = _figures._new_figure(2, 1)
            fig.add_subplot().set_title("猫 犬 🐍")
            assert _figures.to_data_uri(fig).startswith("data:image/png;base64,")
    kinds = [(w.category, str(w.message)) for w in caught]
    assert [k for k in kinds if k[0] is XauditWarning and "show as boxes" in k[1]] == kinds[:1] and len(kinds) == 1
