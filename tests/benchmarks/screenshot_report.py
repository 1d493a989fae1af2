"""Screenshot a report.html in headless Chromium, e.g. for the README.

Run: ``python tests/benchmarks/screenshot_report.py xaudit-report/report.html .ci/report-screenshot.png
[--width 1200] [--max-height 1600]`` (``--max-height 0``: the whole page). Exits 1 if the page made a
network request, logged an error or opened a dialog, so a screenshot is only taken of a clean page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _browser

from _browser import Browser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report.html to open")
    parser.add_argument("png", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels (default 1200)")
    parser.add_argument("--max-height", type=int, default=1600,
                        help="capture at most this many CSS pixels from the top; 0 = the whole page (default 1600)")
    args = parser.parse_args(argv)
    with Browser(width=args.width, timeout_s=60) as browser:
        page = browser.open(args.html)
        problems = page.problems()
        if any(problems.values()):
            print(f"{args.html}: {problems}", file=sys.stderr)
            return 1
        args.png.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(page, args.png, max_height=args.max_height or None)
    print(f"wrote {args.png} ({args.png.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
