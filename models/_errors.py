"""The one exception type users see, and the "did you mean" helper used wherever a string becomes an object."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XauditError(Exception):
    """A user-facing error whose message is one line naming the problem and the fix.

    The CLI prints ``xaudit: error: <message>`` and exits with code 2 for these; anything else is a bug.
    """


class XauditWarning(RuntimeWarning):
    """A notice about the user's input or environment that does not stop the run (uint8 images fed unscaled,
    a cache that could not be written). The CLI prints it as one line ``xaudit: warning: <message>``."""


class UnsafeModelFileError(XauditError):
    """A model file holds pickled Python objects and the caller did not opt in to trusting it."""


def did_you_mean(kind: str, name: str, choices: Iterable[str]) -> XauditError:
    """Build the error for an unknown ``name`` among ``choices``, suggesting the closest match."""
    options = sorted(choices)
    lowered = {option.lower(): option for option in options}  # SHAP_KERNL -> shap_kernel
    close = difflib.get_close_matches(str(name).strip().lower(), list(lowered), n=1, cutoff=0.5)
    close = [lowered[c] for c in close]
    hint = f"did you mean {close[0]!r}? " if close else ""
    return XauditError(f"unknown {kind} {name!r}: {hint}choose one of {', '.join(options)}")
