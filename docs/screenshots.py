"""Regenerate the README's screenshots from the demo: ``make screenshots``.

Runs ``thermoledger-server demo`` (the simulated job through meter → embedded service →
report), then opens the run page it wrote (the page as the service renders it, stylesheet
inlined) in a headless Chromium (Debian's, or ``THERMOLEDGER_CHROMIUM``; driven by Playwright,
a ``[dev]`` dependency) and saves:

* ``docs/img/report.png``: the run page from its top to its power chart, 1000 px wide;
* ``docs/img/report-bounds.png``: its "Efficiency against the bounds" section.

So the pictures are what a user of ``make demo`` gets. Run ids and times differ on each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from thermoledger.service import demo

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the demo and screenshot its run page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=ROOT / "artifacts" / "demo")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    chromium = (
        os.environ.get("THERMOLEDGER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    )
    if demo.main(["--dir", str(args.dir)]) != 0:
        return 1
    from playwright.sync_api import sync_playwright

    html = args.dir / "report.html"
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1024})
            page.goto(html.resolve().as_uri())
            power = page.locator("#power").bounding_box()
            height = 1024.0 if power is None else power["y"] + power["height"] + 16.0
            page.screenshot(
                path=str(args.out / "report.png"),
                full_page=True,
                clip={"x": 0.0, "y": 0.0, "width": 1000.0, "height": height},
            )
            page.locator("#bounds").screenshot(path=str(args.out / "report-bounds.png"))
        finally:
            browser.close()
    print(f"screenshots written to {args.out}/report.png and report-bounds.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
