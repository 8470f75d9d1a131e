"""The pages in a real headless Chromium, against a live server on loopback.

What only a browser can tell: the pages load without console errors or failed requests, the
SVG charts lay out with real geometry (not just markup), the phases are shaded, the bounds
chart has its four series, and the login form works. Screenshots of every page are kept under
``artifacts/screenshots/`` (gitignored) for a human to look at.

Chromium is Debian's (``/usr/bin/chromium``) or the one named by ``THERMOLEDGER_CHROMIUM``,
driven by Playwright's Python API (Playwright's own browser download is not used). Without a
browser the module is skipped — except under ``CI=true``, where that is a failure. The variable
is read at import because the suite's autouse fixture strips ``THERMOLEDGER_*`` from the
environment of every test.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.liveserver import ROOT, LiveServer, migrate_and_issue_token
from tests.pages.seed import (
    CONSTANT_W,
    ESTIMATE_SOURCE,
    METRIC,
    TARGET,
    UNCATALOGUED_GPU,
    Fleet,
    Quality,
    SeededRun,
    States,
    configure_accounting,
    seed_estimate,
    seed_project,
    seed_quality,
    seed_states,
)
from tests.support import dbutil
from tests.support.client import bearer
from tests.support.dbutil import in_ci
from thermoledger.service import cli as server_cli
from thermoledger.service.pages.auth import COOKIE, LOGIN_CSRF_COOKIE

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

CHROMIUM = (
    os.environ.get("THERMOLEDGER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
TIMEOUT_MS = 20_000


def _chromium() -> str:
    if not Path(CHROMIUM).is_file():
        message = f"no Chromium at {CHROMIUM} (set THERMOLEDGER_CHROMIUM)"
        if in_ci():
            pytest.fail(message + " (CI=true: this is an error, not a skip)")
        pytest.skip(message)
    return CHROMIUM


def _admin_token(database_url: str, project: str) -> str:
    """An ``admin`` token of ``project``, issued as an operator would (to set its region)."""
    out, err = io.StringIO(), io.StringIO()
    code = server_cli.main(
        [
            "token",
            "create",
            "--project",
            project,
            "--scopes",
            "admin",
            "--database-url",
            database_url,
        ],
        out=out,
        err=err,
    )
    assert code == 0, err.getvalue()
    return out.getvalue().strip().splitlines()[-1]


@dataclass
class Site:
    """The live server, its seeded runs, and a signed-in browser page."""

    url: str
    token: str
    fleet: Fleet
    states: States
    quality: Quality
    estimated: SeededRun
    backend: str
    page: Any
    problems: list[str] = field(default_factory=list)

    def visit(self, path: str, shot: str) -> Any:
        """Open ``path``, wait for the network to settle, screenshot it, return the page."""
        self.problems.clear()
        response = self.page.goto(self.url + path, wait_until="networkidle")
        assert response is not None, path
        assert response.status == 200, (path, response.status)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{shot}{_suffix(self)}.png"), full_page=True)
        assert self.problems == [], self.problems
        return self.page


def _suffix(site: Site) -> str:
    """Screenshot names: SQLite's as before, PostgreSQL's beside them."""
    return "" if site.backend == "sqlite" else f"-{site.backend}"


@pytest.fixture(scope="module", params=dbutil.BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The live server on SQLite, then on PostgreSQL, with every page state seeded."""
    executable = _chromium()
    directory = tmp_path_factory.mktemp("browser")
    with dbutil.database_url(request.param, directory) as url:
        yield from _site(executable, directory, url, request.param)


def _site(executable: str, directory: Path, url: str, backend: str) -> Iterator[Site]:
    from playwright.sync_api import sync_playwright

    token = migrate_and_issue_token(url, project="pages")
    admin = _admin_token(url, project="pages")
    server = LiveServer(url, directory / "server.log")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as api:
            configure_accounting(api, bearer(admin))
            fleet = seed_project(api, bearer(token))
            states = seed_states(api, bearer(token), bearer(admin))
            quality = seed_quality(api, bearer(token))
            estimated = seed_estimate(api, bearer(token))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox"]
            )
            try:
                context = browser.new_context(viewport={"width": 1200, "height": 900})
                context.set_default_timeout(TIMEOUT_MS)
                page = context.new_page()
                found = Site(server.url, token, fleet, states, quality, estimated, backend, page)
                page.on(
                    "console",
                    lambda m: (
                        found.problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "warning")
                        else None
                    ),
                )
                page.on("pageerror", lambda e: found.problems.append(f"page error: {e}"))
                page.on(
                    "requestfailed", lambda r: found.problems.append(f"request failed: {r.url}")
                )
                page.on(
                    "response",
                    lambda r: (
                        found.problems.append(f"HTTP {r.status}: {r.url}")
                        if r.status >= 400
                        else None
                    ),
                )
                yield found
            finally:
                browser.close()
    finally:
        server.stop()


def _geometry(page: Any, selector: str) -> list[dict[str, float]]:
    """Rendered bounding boxes (SVG user units) of every element matching ``selector``."""
    return list(
        page.eval_on_selector_all(
            selector,
            "els => els.map(e => { const b = e.getBBox(); "
            "return {x: b.x, y: b.y, width: b.width, height: b.height}; })",
        )
    )


def test_login_form_signs_the_browser_in(site: Site) -> None:
    page = site.page
    response = page.goto(site.url + "/runs", wait_until="networkidle")
    assert response is not None
    assert "/login" in page.url  # redirected to the form
    page.fill("input[name=token]", site.token)
    page.click("button[type=submit]")
    page.wait_for_url("**/runs")
    assert page.locator("h1").inner_text() == "Runs"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies[COOKIE]["httpOnly"] is True
    assert cookies[COOKIE]["sameSite"] == "Lax"
    assert cookies[COOKIE]["value"] != site.token  # a session id, not the API token
    assert LOGIN_CSRF_COOKIE not in cookies  # the form's double-submit cookie is spent
    assert site.problems == [], site.problems  # no CSP report, no failed request


def test_runs_page(site: Site) -> None:
    page = site.visit("/runs", "runs")
    # The fleet, one run per page state (the model tag's training run too), the quality runs
    # and the estimated run.
    runs = 5 + 7 + len(site.quality.runs) + 1
    assert page.locator("tr[data-run]").count() == runs
    assert page.locator("[data-total=runs]").inner_text() == str(runs)
    assert re.fullmatch(r"[\d.,]+ (J|Wh|kWh|MWh)", page.locator("[data-total=energy]").inner_text())


def test_report_page_charts_render_with_data(site: Site) -> None:
    run = site.fleet.train
    page = site.visit(f"/runs/{run.id}", "report")

    series = page.locator("svg[data-chart=power] g.series")
    assert series.count() == run.devices
    for i in range(run.devices):
        assert int(series.nth(i).get_attribute("data-points") or 0) > 100
    means = _geometry(page, "svg[data-chart=power] g.series polyline.mean")
    bands = _geometry(page, "svg[data-chart=power] g.series polygon.band")
    assert len(means) >= run.devices
    assert len(bands) >= run.devices
    assert all(box["width"] > 500 for box in means)  # each line spans the run, as drawn
    # The bursty GPU swings 310–640 W inside a bucket: its band is tall; the steady one's is flat.
    assert max(box["height"] for box in bands) > 50
    phases = _geometry(page, "svg[data-chart=power] rect.phase")
    assert len(phases) == 3
    widths = [box["width"] for box in phases]
    assert widths[1] > widths[2] > widths[0] > 0  # train 12 min, eval 2 min, warmup 1 min

    bounds = page.locator("svg[data-chart=bounds] g.series")
    assert bounds.count() == 4
    names = [bounds.nth(i).get_attribute("data-series") for i in range(4)]
    assert names == ["measured", "hardware_roofline", "energy_roofline", "landauer"]
    points = _geometry(page, "svg[data-chart=bounds] circle.point")
    assert len(points) == 4
    xs = [box["x"] for box in points]
    assert xs[3] < min(xs[:3])  # the Landauer floor lies orders of magnitude to the left
    assert page.locator("svg[data-chart=energy-by-device] rect.bar").count() == run.devices
    assert page.locator("a.export").count() == 2


def test_report_exports_download_in_the_browser(site: Site) -> None:
    run = site.fleet.train
    response = site.page.request.get(f"{site.url}/runs/{run.id}/report.csv")
    assert response.status == 200
    assert response.text().startswith("section,run_id,")
    report = site.page.request.get(f"{site.url}/runs/{run.id}/report.json").json()
    assert report["run"]["id"] == run.id


def test_compare_page(site: Site) -> None:
    fleet = site.fleet
    query = "&".join(f"run={r.id}" for r in (fleet.train, fleet.train_large, fleet.serve))
    page = site.visit(f"/compare?{query}", "compare")
    for chart in ("compare-energy", "compare-j_per_token", "compare-flop_per_j", "compare-co2e"):
        assert page.locator(f"svg[data-chart={chart}] rect.bar").count() == 3, chart


def test_model_page(site: Site) -> None:
    page = site.visit("/models/demo-1b?compare=demo-3b&tariff_usd_per_kwh=0.12", "model")
    curves = _geometry(page, "svg[data-chart=amortisation-energy] polyline.curve")
    assert len(curves) == 3
    assert all(box["width"] > 500 for box in curves)
    assert page.locator("svg[data-chart=amortisation-usd]").count() == 1
    assert page.locator("svg[data-chart=amortisation-energy] line.marker").count() >= 2


def test_plan_page(site: Site) -> None:
    site.visit("/plan", "plan-form")
    page = site.page
    page.fill("input[name=n_params]", "7e9")
    page.fill("input[name=n_tokens]", "2e12")
    page.fill("input[name=n_devices]", "64")
    page.select_option("select[name=region]", "DE")
    page.click("form.plan button[type=submit]")
    page.wait_for_selector("svg[data-chart=plan-energy]")
    assert page.locator("[data-chinchilla=over_trained]").count() == 1
    assert page.locator("[data-basis=measured]").count() == 1
    page.screenshot(path=str(SCREENSHOTS / f"plan{_suffix(site)}.png"), full_page=True)
    assert site.problems == [], site.problems


def _box(page: Any, selector: str) -> dict[str, float]:
    (box,) = _geometry(page, selector)
    return box


def test_efficiency_tile_with_flops_declared_and_not(site: Site) -> None:
    page = site.visit(f"/runs/{site.fleet.train.id}", "efficiency-mfu")
    assert re.fullmatch(r"MFU [\d.]+ %", page.locator("[data-mfu=shown]").inner_text())
    page = site.visit(f"/runs/{site.states.no_flops.id}", "efficiency-no-flops")
    tile = page.locator("[data-mfu=missing]")
    assert tile.is_visible()
    assert tile.inner_text().startswith("no FLOPs declared")
    assert page.locator("[data-bounds=missing]").is_visible()
    page = site.visit(f"/runs/{site.states.flops_no_peak.id}", "efficiency-no-peak")
    text = page.locator("[data-mfu=missing]").inner_text()
    assert text.startswith("FLOPs declared, but no catalog peak")
    assert UNCATALOGUED_GPU in text
    assert "no FLOPs declared" not in page.locator("main").inner_text()


def test_priced_and_unpriced_runs(site: Site) -> None:
    page = site.visit(f"/runs/{site.states.priced.id}", "report-priced")
    assert page.locator("[data-figure=cost]").inner_text().endswith(" USD")
    assert "not priced" not in page.locator("#carbon").inner_text()
    page = site.visit(f"/runs/{site.fleet.train.id}", "report-unpriced")
    assert page.locator("[data-figure=cost]").inner_text() == "not priced"
    reason = page.locator("[data-figure=cost_detail]").inner_text()
    assert reason.startswith("not priced")


def test_model_page_without_inference_runs(site: Site) -> None:
    page = site.visit(f"/models/{site.states.training_only_model}", "model-no-inference")
    assert page.locator("header.top nav a[aria-current=page]").inner_text() == "Models"
    assert page.locator("li[data-need=training].have").is_visible()
    assert page.locator("li[data-need=inference].lack").is_visible()
    assert "--kind inference --tag model=solo-7b" in page.locator("main").inner_text()
    page.fill("input[name=inference_j_per_token]", "0.05")
    page.click("main form button[type=submit]")
    page.wait_for_selector("svg[data-chart=amortisation-energy]")
    assert page.locator("svg[data-chart=amortisation-energy] polyline.curve").count() >= 1
    assert site.problems == [], site.problems


def test_runs_without_chunks_running_and_ended(site: Site) -> None:
    page = site.visit(f"/runs/{site.states.ended_empty.id}", "no-chunks-ended")
    ended = page.locator("[data-empty=ended]")
    assert ended.is_visible()
    assert "without measurements" in ended.inner_text()
    assert "thermoledger push" in ended.inner_text()
    assert page.locator("svg").count() == 0
    page = site.visit(f"/runs/{site.states.running_empty.id}", "no-chunks-running")
    assert page.locator("[data-empty=running]").inner_text().startswith("No measurements yet")
    assert page.locator("[data-empty=ended]").count() == 0


def test_constant_power_is_a_line_inside_the_plot(site: Site) -> None:
    page = site.visit(f"/runs/{site.states.constant.id}", "constant-power")
    plot = _box(page, "svg[data-chart=power] rect.plot-bg")
    means = _geometry(page, "svg[data-chart=power] g.series polyline.mean")
    assert len(means) == site.states.constant.devices
    for line in means:
        assert line["width"] > 0.9 * plot["width"]  # it spans the run
        assert line["height"] < 1.0  # flat: constant
        # Inside the plot area, well clear of its top border (and above the axis).
        assert plot["y"] + 0.05 * plot["height"] < line["y"] < plot["y"] + plot["height"] - 1
    labels = page.locator("svg[data-chart=power] text.tick.y").all_text_contents()
    assert max(float(t.replace(",", "")) for t in labels) > CONSTANT_W
    # The energy figures read in a unit of their size, never as 1.6e-4 kWh.
    assert "e-" not in page.locator("section.totals").inner_text()


def test_energy_decomposition_bar_and_sources(site: Site) -> None:
    page = site.visit(f"/runs/{site.fleet.train.id}", "decomposition")
    plot = _box(page, "svg[data-chart=decomposition] rect.plot-bg")
    segments = _geometry(page, "svg[data-chart=decomposition] rect.segment")
    assert 2 <= len(segments) <= 4  # constant, compute, memory (and unexplained when > 0)
    assert all(box["width"] > 1 and box["height"] > 10 for box in segments)
    for before, after in itertools.pairwise(segments):  # stacked: each starts where one ends
        assert after["x"] == pytest.approx(before["x"] + before["width"], abs=0.2)
    assert segments[0]["x"] == pytest.approx(plot["x"], abs=0.2)
    total = _box(page, "svg[data-chart=decomposition] line.total")
    assert plot["x"] < total["x"] <= plot["x"] + plot["width"] + 0.5
    legend = page.locator("section#decomposition figcaption .key").all_text_contents()
    assert legend == ["constant", "compute", "memory", "unexplained"]
    rows = page.locator("table[data-decomposition-devices] tbody tr")
    assert rows.count() == site.fleet.train.devices
    tags = page.locator("table[data-decomposition-devices] [data-provenance]")
    assert set(tags.all_text_contents()) == {
        "measured_lowest_sustained",
        "memory_activity_counter",
    }
    # the constant-power run has no memory counter: the part says so, in words
    page = site.visit(f"/runs/{site.states.constant.id}", "decomposition-no-counter")
    memory = page.locator("tr[data-part=memory]")
    assert memory.get_attribute("data-status") == "not_available"
    assert "no memory-activity counter" in memory.inner_text()


def test_quality_page_front_and_trend(site: Site) -> None:
    page = site.visit(f"/quality?metric={METRIC}&target={TARGET}", "quality")
    assert page.locator("header.top nav a[aria-current=page]").inner_text() == "Quality"
    runs = len(site.quality.runs)
    plot = _box(page, "svg[data-chart=pareto-energy] rect.plot-bg")
    points = _geometry(page, "svg[data-chart=pareto-energy] g[data-series=runs] circle.point")
    assert len(points) == runs
    for box in points:  # inside the plot
        assert plot["x"] - 7 <= box["x"] <= plot["x"] + plot["width"]
        assert plot["y"] - 7 <= box["y"] <= plot["y"] + plot["height"]
    front = page.locator("svg[data-chart=pareto-energy] circle.point.front").count()
    assert front == runs  # each longer run reaches a better loss
    front_line = _box(page, "svg[data-chart=pareto-energy] g[data-series=front] polyline")
    assert front_line["width"] > 0.5 * plot["width"]
    assert page.locator("table[data-table=pareto] tr.front").count() == front
    assert len(_geometry(page, "svg[data-chart=trend] g[data-series=runs] circle.point")) == runs
    trend_plot = _box(page, "svg[data-chart=trend] rect.plot-bg")
    fitted = _box(page, "svg[data-chart=trend] g[data-series='fitted halving'] polyline.curve")
    assert fitted["width"] > 0.8 * trend_plot["width"]
    assert fitted["height"] > 10  # falling on the log axis
    assert page.locator("svg[data-chart=trend] polyline.curve.dashed").count() == 1
    halving = page.locator("[data-halving]").inner_text()
    assert halving.startswith("halving every ")
    assert "16 months" in halving
    page.select_option("select[name=cost]", "usd")  # priced: the tariff predates these runs
    page.click("main form button[type=submit]")
    page.wait_for_selector("svg[data-chart=pareto-usd]")
    assert page.locator("svg[data-chart=pareto-usd] g[data-series=runs] circle").count() == runs
    page.screenshot(path=str(SCREENSHOTS / f"quality-usd{_suffix(site)}.png"), full_page=True)
    assert site.problems == [], site.problems


def test_quality_page_without_enough_data(site: Site) -> None:
    page = site.visit("/quality?metric=bleu&direction=higher&target=30", "quality-empty")
    assert page.locator("[data-reason=pareto]").is_visible()
    assert page.locator("[data-reason=fit]").inner_text().startswith("No halving time: 0 run(s)")
    assert page.locator("svg").count() == 0


def test_run_page_metric_chart(site: Site) -> None:
    page = site.visit(f"/runs/{site.quality.best.id}", "report-metrics")
    series = page.locator("svg[data-chart=metric-energy] g.series")
    assert series.count() == 1
    assert series.first.get_attribute("data-series") == METRIC
    plot = _box(page, "svg[data-chart=metric-energy] rect.plot-bg")
    line = _box(page, "svg[data-chart=metric-energy] polyline.curve")
    band = _box(page, "svg[data-chart=metric-energy] polygon.band")
    assert line["width"] > 0.8 * plot["width"]
    assert line["height"] > 0.5 * plot["height"]  # the loss falls from 4 towards 2
    assert band["width"] >= line["width"]  # the energy band around the line


def test_planner_with_inference_demand(site: Site) -> None:
    site.visit("/plan", "plan-inference-form")
    page = site.page
    page.fill("input[name=n_devices]", "64")
    page.fill("input[name=target_loss]", "2.1")
    page.fill("input[name=inference_tokens]", "2e12")
    page.fill("input[name=test_time_multiplier]", "4")
    page.fill("input[name=queries]", "1e9")
    page.click("form.plan button[type=submit]")  # N and D left empty: a target loss stands in
    page.wait_for_selector("table[data-table=allocations]")
    headings = page.locator("th[data-allocation]").all_text_contents()
    assert headings == ["optimum (least energy)", "Chinchilla (compute-optimal)"]
    optimum = float(page.locator("[data-cell=optimum-n]").inner_text())
    chinchilla = float(page.locator("[data-cell=chinchilla-n]").inner_text())
    assert optimum < chinchilla  # serving demand favours a smaller model trained longer
    assert page.locator("[data-cell=optimum-per-answer]").inner_text().split(" ")[1] in ("J", "Wh")
    assert page.locator("[data-saving]").is_visible()
    assert page.locator("ul[data-assumptions=inference-aware] li").count() >= 4
    page.screenshot(path=str(SCREENSHOTS / f"plan-inference{_suffix(site)}.png"), full_page=True)
    assert site.problems == [], site.problems


def test_estimated_run_in_the_list_and_its_page(site: Site) -> None:
    run = site.estimated
    page = site.visit("/runs", "runs-estimate")
    row = page.locator(f"tr[data-run='{run.id}']")
    assert row.locator("[data-estimate]").inner_text() == "estimate"
    assert ESTIMATE_SOURCE in row.inner_text()
    assert row.locator("[data-estimated-energy]").inner_text() == "24.00 kWh"
    row.locator("a").first.click()
    page.wait_for_selector("[data-estimate=it_energy]")
    tile = page.locator("[data-estimate=it_energy]").inner_text()
    assert "24.00 kWh" in tile
    assert "21.60 kWh … 26.40 kWh" in tile
    assert ESTIMATE_SOURCE in page.locator("[data-estimate-source]").inner_text()
    assert "no measurements" not in page.locator("main").inner_text().lower()
    page.screenshot(path=str(SCREENSHOTS / f"report-estimate{_suffix(site)}.png"), full_page=True)
    assert site.problems == [], site.problems


def test_sign_out_ends_the_session(site: Site) -> None:
    """Last in the module: the page signs out through its own form (with its CSRF value)."""
    page = site.visit("/runs", "runs-before-sign-out")
    cookie = {c["name"]: c for c in page.context.cookies()}[COOKIE]
    page.click("form.logout button[type=submit]")
    page.wait_for_url("**/login")
    assert COOKIE not in {c["name"] for c in page.context.cookies()}
    replayed = httpx.get(
        site.url + "/runs",
        headers={"Accept": "text/html"},
        cookies={COOKIE: cookie["value"]},
        follow_redirects=False,
    )
    assert replayed.status_code == 303  # revoked server-side: the old cookie is no session
    assert site.problems == [], site.problems
