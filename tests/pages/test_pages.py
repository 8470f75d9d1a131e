"""The HTML pages through the app (TestClient), on SQLite and PostgreSQL.

Browser behaviour (rendering, console errors, screenshots) is `test_browser`'s; here: what
each page says, who may see it, and that its figures are the JSON API's.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from tests.pages.seed import CONSTANT_W, UNCATALOGUED_GPU, Fleet, States
from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run, make_project
from tests.support.signin import HTML, sign_in, sign_out
from thermoledger.service.pages.auth import COOKIE
from thermoledger.service.pages.render import ENERGY_UNITS, energy_unit

_J_PER = {unit: j for j, unit in ENERGY_UNITS}


def _joules(text: str) -> float:
    """An energy as a page prints it (``450.2 Wh``, ``1,234 J``), in joules."""
    match = re.fullmatch(r"\s*([\d.,]+) (J|Wh|kWh|MWh|GWh)\s*", text)
    assert match, text
    return float(match.group(1).replace(",", "")) * _J_PER[match.group(2)]


def _svg(html: str, chart: str) -> str:
    match = re.search(rf'<svg class="chart" data-chart="{re.escape(chart)}".*?</svg>', html, re.S)
    assert match, f"no {chart} chart"
    return match.group(0)


def _series(svg: str) -> dict[str, int]:
    return {
        name: int(points)
        for name, points in re.findall(
            r'<g class="series" data-series="([^"]*)" data-points="(\d+)"', svg
        )
    }


def _get(client: TestClient, url: str, headers: dict[str, str]) -> str:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    text: str = response.text
    return text


# --------------------------------------------------------------------------- sign-in


def test_pages_redirect_to_the_login_form_without_a_token(client: TestClient) -> None:
    response = client.get("/runs?kind=training", headers=HTML, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fruns%3Fkind%3Dtraining"
    form = client.get("/login?next=/runs", headers=HTML)
    assert form.status_code == 200
    assert 'name="token"' in form.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/runs"


@pytest.fixture
def browser(app: FastAPI) -> TestClient:
    """A client with its own cookie jar (the module's client must stay signed out)."""
    return TestClient(app, raise_server_exceptions=False)


def test_login_opens_a_session_whose_httponly_cookie_the_pages_accept(
    browser: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    token = project.read["Authorization"].removeprefix("Bearer ")
    response = sign_in(browser, token, next=f"/runs/{fleet.train.id}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/runs/{fleet.train.id}"
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(f"{COOKIE}="))
    assert "HttpOnly" in session
    assert "samesite=lax" in session.lower()
    assert "Path=/" in session
    assert browser.cookies.get(COOKIE) not in (None, token)  # a session id, not the token
    assert token not in " ".join(cookies)
    page = browser.get(f"/runs/{fleet.train.id}", headers=HTML)
    assert page.status_code == 200
    assert fleet.train.name in page.text
    assert 'action="/logout"' in page.text
    out = sign_out(browser)
    assert out.status_code == 303
    assert COOKIE not in browser.cookies
    assert browser.get("/runs", headers=HTML, follow_redirects=False).status_code == 303


def test_pages_shown_to_a_bearer_header_have_no_sign_out_form(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, _ = seeded
    page = _get(client, "/runs", {**project.read, **HTML})
    assert 'action="/logout"' not in page
    assert 'name="csrf"' not in page


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "paste a token"),
        ("tl_000000000000_" + "x" * 43, "invalid token"),
        ("nope", "malformed"),
    ],
)
def test_login_refuses_bad_tokens_with_the_reason(
    browser: TestClient, token: str, reason: str
) -> None:
    response = sign_in(browser, token, **HTML)
    assert response.status_code == 401
    assert reason in response.text
    assert f"{COOKIE}=" not in response.headers.get("set-cookie", "")
    assert 'name="csrf"' in response.text  # the form again, ready to be sent


def test_login_needs_the_read_scope_and_never_redirects_off_site(
    browser: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, _ = seeded
    ingest = project.ingest["Authorization"].removeprefix("Bearer ")
    response = sign_in(browser, ingest)
    assert response.status_code == 401
    assert "read" in response.text
    token = project.read["Authorization"].removeprefix("Bearer ")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil"):
        response = sign_in(browser, token, next=target)
        assert response.headers["location"] == "/runs"


def test_a_query_token_is_not_a_login(client: TestClient, seeded: tuple[Project, Fleet]) -> None:
    project, _ = seeded
    token = project.read["Authorization"].removeprefix("Bearer ")
    response = client.get(f"/runs?token={token}", headers=HTML, follow_redirects=False)
    assert response.status_code == 303
    assert token not in response.headers["location"]


# --------------------------------------------------------------------------- tenancy, errors


def test_another_projects_run_is_not_found_as_html(
    client: TestClient, seeded: tuple[Project, Fleet], other: Project
) -> None:
    _, fleet = seeded
    response = client.get(f"/runs/{fleet.train.id}", headers={**other.read, **HTML})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "not found" in response.text
    listing = _get(client, "/runs", {**other.read, **HTML})
    assert fleet.train.name not in listing
    for url in (f"/runs/{fleet.train.id}/report.csv", f"/runs/{fleet.train.id}/report.json"):
        assert client.get(url, headers=other.read).status_code == 404


def test_api_errors_stay_json(client: TestClient, seeded: tuple[Project, Fleet]) -> None:
    project, _ = seeded
    response = client.get(
        "/api/v1/runs/00000000-0000-0000-0000-000000000000", headers={**project.read, **HTML}
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_bad_filters_are_an_html_422_naming_the_field(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, _ = seeded
    for query, field in (("started_after=yesterday", "started_after"), ("tag=nokey", "tag[0]")):
        response = client.get(f"/runs?{query}", headers={**project.read, **HTML})
        assert response.status_code == 422, response.text
        assert field in response.text


def test_static_stylesheet_is_served(client: TestClient) -> None:
    response = client.get("/static/style.css")
    assert response.status_code == 200
    assert "svg.chart" in response.text


# --------------------------------------------------------------------------- runs list


def test_runs_list_totals_are_the_sum_of_the_reports(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    html = _get(client, "/runs", {**project.read, **HTML})
    for run in (fleet.train, fleet.serve, fleet.train_large, fleet.serve_large, fleet.empty):
        assert f'data-run="{run.id}"' in html
    measured = [fleet.train, fleet.serve, fleet.train_large, fleet.serve_large]
    reports = [
        client.get(f"/api/v1/runs/{r.id}/report", headers=project.read).json() for r in measured
    ]
    total_j = sum(r["energy"]["total"]["energy_j"] for r in reports)
    total_g = sum(r["carbon"]["location_based"]["co2e_g"] for r in reports)
    shown = re.search(r'data-total="energy">([^<]*)<', html)
    assert shown is not None
    assert shown.group(1).endswith(f" {energy_unit(total_j)[0]}")
    assert _joules(shown.group(1)) == pytest.approx(total_j, rel=1e-3)
    shown_co2e = re.search(r'data-total="co2e">([\d.,]+) (k?g)CO2e<', html)
    assert shown_co2e is not None
    grams = float(shown_co2e.group(1).replace(",", "")) * (
        1e3 if shown_co2e.group(2) == "kg" else 1
    )
    assert grams == pytest.approx(total_g, rel=1e-3)
    assert 'data-total="runs">5<' in html
    assert 'data-total="usd">not priced<' in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("kind=inference", {"demo-1b-serve", "demo-3b-serve"}),
        ("tag=model%3Ddemo-3b", {"demo-3b-train", "demo-3b-serve"}),
        ("tag=team%3Dnlp&kind=training", {"demo-1b-train", "demo-3b-train"}),
        ("status=running", {"queued-job"}),
        ("started_after=2000-01-01&started_before=2000-12-31", set()),
    ],
)
def test_runs_list_filters(
    client: TestClient, seeded: tuple[Project, Fleet], query: str, expected: set[str]
) -> None:
    project, fleet = seeded
    html = _get(client, f"/runs?{query}", {**project.read, **HTML})
    names = {
        r.name
        for r in (fleet.train, fleet.serve, fleet.train_large, fleet.serve_large, fleet.empty)
        if f'data-run="{r.id}"' in html
    }
    assert names == expected
    assert f'data-total="runs">{len(expected)}<' in html


# --------------------------------------------------------------------------- run report


def test_report_page_draws_every_device_the_phases_and_the_bounds(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    run = fleet.train
    html = _get(client, f"/runs/{run.id}", {**project.read, **HTML})
    report = client.get(f"/api/v1/runs/{run.id}/report", headers=project.read).json()

    power = _svg(html, "power")
    series = _series(power)
    assert list(series) == [d["key"] for d in report["energy"]["by_device"]]
    assert all(points > 10 for points in series.values())
    assert power.count('class="phase phase-') == 3
    assert power.count('class="band"') >= run.devices
    assert power.count('class="mean"') >= run.devices

    bounds = _series(_svg(html, "bounds"))
    assert list(bounds) == ["measured", "hardware_roofline", "energy_roofline", "landauer"]
    assert all(points == 1 for points in bounds.values())
    device_bars = _svg(html, "energy-by-device")
    values = [float(v) for v in re.findall(r'class="bar"[^>]*data-value="([^"]+)"', device_bars)]
    devices = report["energy"]["by_device"]
    unit, j_per_unit = energy_unit(max(d["energy_high_j"] for d in devices))
    assert f'text-anchor="middle">{unit}</text>' in device_bars  # the axis says the unit
    assert values == pytest.approx([d["energy_j"] / j_per_unit for d in devices])
    assert len(_series(_svg(html, "energy-by-phase"))) == 3

    for text in (
        "simulated devices: not a measurement",
        "location-based",
        "market-based",
        "not available",
        "The true value lies between",
        "energy counter",
        f"/runs/{run.id}/report.csv",
        f"/runs/{run.id}/report.json",
        "k_B·T·ln 2",
        "Accounting basis",
        "region: DE",  # the project's (`configure_accounting`), as the ledger froze it
        "PUE 1.56 (typical, survey:",
        "the built-in default of DE location/average, 381 gCO2e/kWh",
    ):
        assert text in html, text
    assert report["carbon"]["location_based"]["factor"]["region"] == "DE"
    assert report["accounting"]["frozen"] is True


def test_report_page_of_a_running_run_without_measurements(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    html = _get(client, f"/runs/{fleet.empty.id}", {**project.read, **HTML})
    assert 'data-empty="running"' in html
    assert "No measurements yet" in html
    assert "ended" not in html
    assert "<svg" not in html
    assert 'href="/runs"' in html  # the navigation, and the way back


def test_report_page_of_an_ended_run_without_measurements_says_what_happened(
    client: TestClient, states: tuple[Project, States]
) -> None:
    project, state = states
    headers = {**project.read, **HTML}
    html = _get(client, f"/runs/{state.ended_empty.id}", headers)
    assert 'data-empty="ended"' in html
    assert "No measurements yet" not in html
    assert "ended (finished) without measurements" in html
    for hint in ("The meter never started", "thermoledger status", "thermoledger push"):
        assert hint in html, hint
    assert "<svg" not in html
    running = _get(client, f"/runs/{state.running_empty.id}", headers)
    assert 'data-empty="running"' in running
    listing = _get(client, "/runs", headers)
    for run, text in ((state.ended_empty, "no measurements"), (state.running_empty, "no data yet")):
        row = re.search(rf'data-run="{run.id}".*?</tr>', listing, re.S)
        assert row is not None
        assert f">{text}<" in row.group(0), run.name


def test_page_exports_are_the_api_exports(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    for page_path, api_path in (("report.json", "report"), ("report.csv", "report.csv")):
        page = client.get(f"/runs/{fleet.train.id}/{page_path}", headers=project.read)
        api = client.get(f"/api/v1/runs/{fleet.train.id}/{api_path}", headers=project.read)
        assert page.status_code == api.status_code == 200
        if page_path.endswith(".json"):
            assert page.json() == api.json()
        else:
            assert page.content == api.content
        assert "attachment" in page.headers["content-disposition"]


def test_a_name_with_markup_is_escaped(client: TestClient, project: Project) -> None:
    run_id = create_run(client, project, name="<script>alert(1)</script>")
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert response.status_code == 200
    for url in (f"/runs/{run_id}", "/runs", f"/compare?run={run_id}"):
        html = _get(client, url, {**project.read, **HTML})
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --------------------------------------------------------------------------- compare, models, plan


def test_compare_page_puts_runs_side_by_side(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    runs = [fleet.train, fleet.serve, fleet.empty]
    html = _get(
        client, "/compare?" + "&".join(f"run={r.id}" for r in runs), {**project.read, **HTML}
    )
    energy = _series(_svg(html, "compare-energy"))
    assert list(energy) == [fleet.train.name, fleet.serve.name]  # the empty run has no bar
    assert set(_series(_svg(html, "compare-j_per_token"))) == {fleet.train.name, fleet.serve.name}
    assert 'data-chart="compare-cost"' not in html  # nothing is priced: no empty chart
    assert "no data yet" in html
    too_many = "&".join(f"run={fleet.train.id[:-1]}{i}" for i in range(9))
    assert client.get(f"/compare?{too_many}", headers={**project.read, **HTML}).status_code == 422


def test_models_page_lists_tags_and_links_the_amortisation(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, _ = seeded
    html = _get(client, "/models", {**project.read, **HTML})
    assert 'href="/models/demo-1b"' in html
    assert 'href="/models/demo-3b"' in html
    page = _get(client, "/models/demo-1b?compare=demo-3b", {**project.read, **HTML})
    energy = _series(_svg(page, "amortisation-energy"))
    assert list(energy) == ["demo-1b: amortised", "demo-1b: inference only", "demo-3b: amortised"]
    assert 'data-chart="amortisation-co2e"' in page
    assert 'data-chart="amortisation-usd"' not in page  # no tariff
    priced = _get(client, "/models/demo-1b?tariff_usd_per_kwh=0.1", {**project.read, **HTML})
    assert 'data-chart="amortisation-usd"' in priced
    missing = client.get("/models/nope", headers={**project.read, **HTML})
    assert missing.status_code == 404
    assert 'href="/models"' in missing.text  # an error page keeps the navigation


def test_plan_page_estimates_and_flags_chinchilla(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, _ = seeded
    empty = _get(client, "/plan", {**project.read, **HTML})
    assert 'name="n_params"' in empty
    assert 'data-chart="plan-energy"' not in empty
    query = "n_params=7e9&n_tokens=2e12&hardware=nvidia-h100-sxm5-80gb&n_devices=64"
    html = _get(client, f"/plan?{query}", {**project.read, **HTML})
    assert 'data-chinchilla="over_trained"' in html
    assert 'data-basis="measured"' in html
    basis = _series(_svg(html, "plan-basis"))
    assert len(basis) == 3  # two comparable training runs and the range
    bad = _get(
        client, "/plan?n_params=7e9&n_tokens=1e12&hardware=no-such-gpu", {**project.read, **HTML}
    )
    assert "not a catalog id" in bad


def test_pages_of_a_project_without_a_region_say_why_nothing_is_in_gco2e(
    app: FastAPI, client: TestClient
) -> None:
    from tests.pages.seed import seed_run

    project = make_project(app)  # no region configured: no factor applies, none is guessed
    headers = {**project.read, **HTML}
    train = seed_run(
        client,
        project.every,
        name="bare-train",
        devices=1,
        duration_s=60.0,
        tags={"model": "bare"},
        work={"model_params": 1.3e8, "tokens": 2.0e7, "dtype": "bf16"},
    )
    seed_run(
        client,
        project.every,
        name="bare-serve",
        kind="inference",
        devices=1,
        duration_s=30.0,
        tags={"model": "bare"},
        work={"model_params": 1.3e8, "tokens": 4.0e6},
    )
    reason = "the project has no region configured"
    report = _get(client, f"/runs/{train.id}", headers)
    assert 'data-figure="co2e_location">not available<' in report
    assert reason in report
    runs = _get(client, "/runs", headers)
    assert 'data-total="co2e">not available<' in runs
    assert f"2 run(s) without it: {reason}" in runs
    compare = _get(client, f"/compare?run={train.id}", headers)
    assert 'data-chart="compare-co2e"' not in compare  # no bars from a default factor
    model = _get(client, "/models/bare", headers)
    assert 'data-chart="amortisation-co2e"' not in model
    assert "gCO2e not available" in model
    assert f"gCO2e figures are not available: {reason}" in model
    overridden = _get(client, "/models/bare?region=FR", headers)
    assert 'data-chart="amortisation-co2e"' in overridden
    assert "[override: given in the request]" in overridden
    query = "n_params=7e9&n_tokens=1.4e11&hardware=nvidia-h100-sxm5-80gb&n_devices=64"
    plan = _get(client, f"/plan?{query}", headers)
    assert 'data-chart="plan-energy"' in plan
    assert reason in plan


def _answer(client: TestClient, project: Project, url: str) -> Any:
    response = client.get(url, headers=project.read)
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- page states


def _tile(html: str, label: str) -> str:
    match = re.search(rf'<span class="label">{re.escape(label)}</span>.*?</div>', html, re.S)
    assert match, label
    return match.group(0)


def test_efficiency_tile_says_why_there_is_no_mfu(
    client: TestClient, seeded: tuple[Project, Fleet], states: tuple[Project, States]
) -> None:
    project, fleet = seeded
    declared = _tile(
        _get(client, f"/runs/{fleet.train.id}", {**project.read, **HTML}), "efficiency"
    )
    assert re.search(r'data-mfu="shown">MFU [\d.]+ %<', declared)

    owner, state = states
    headers = {**owner.read, **HTML}
    html = _get(client, f"/runs/{state.no_flops.id}", headers)
    tile = _tile(html, "efficiency")
    assert 'data-mfu="missing">no FLOPs declared (add_flops, or a model size and tokens)<' in tile
    assert "No bounds for this run: no FLOPs declared" in html

    html = _get(client, f"/runs/{state.flops_no_peak.id}", headers)
    tile = _tile(html, "efficiency")
    assert "FLOP/J" in tile  # the FLOPs were declared: FLOP/J is there, the MFU is not
    assert "no FLOPs declared" not in html
    assert (
        f"FLOPs declared, but no catalog peak for &#39;{UNCATALOGUED_GPU}&#39; "
        "(not in the hardware catalog)"
    ) in tile
    assert 'data-bounds="missing"' in html


def test_priced_and_unpriced_runs(client: TestClient, states: tuple[Project, States]) -> None:
    project, state = states
    headers = {**project.read, **HTML}
    report = client.get(f"/api/v1/runs/{state.priced.id}/report", headers=project.read).json()
    assert report["cost"]["energy_usd"] > 0
    priced = _get(client, f"/runs/{state.priced.id}", headers)
    shown = re.search(r'data-figure="cost">([^<]*)<', priced)
    assert shown is not None
    assert re.fullmatch(r"[\d.,e-]+ USD", shown.group(1)), shown.group(1)
    assert "not priced" not in priced
    unpriced = _get(client, f"/runs/{state.constant.id}", headers)
    assert 'data-figure="cost">not priced<' in unpriced
    listing = _get(client, "/runs", headers)
    assert re.search(r'data-total="usd">[^<]*USD<', listing)  # the priced run's cost
    assert re.search(r'data-missing="usd">\d+ run\(s\) without it', listing)


def test_a_model_without_inference_runs_is_a_page_that_says_how_to_tag_them(
    client: TestClient, states: tuple[Project, States]
) -> None:
    project, state = states
    tag = state.training_only_model
    headers = {**project.read, **HTML}
    html = _get(client, f"/models/{tag}", headers)
    assert 'data-model="incomplete"' in html
    assert 'href="/models" aria-current="page"' in html  # the site's navigation
    assert '<li data-need="training" class="have">' in html
    assert '<li data-need="inference" class="lack">' in html
    assert f"--kind inference --tag model={tag}" in html
    assert "m.add_tokens(" in html
    assert 'name="inference_j_per_token"' in html  # the way forward without an inference run
    assumed = _get(client, f"/models/{tag}?inference_j_per_token=0.05", headers)
    assert 'data-chart="amortisation-energy"' in assumed
    api = client.get(f"/api/v1/models/{tag}/amortisation", headers=project.read)
    assert api.status_code == 409  # the API's answer is unchanged


def test_a_constant_draw_is_drawn_inside_the_plot(
    client: TestClient, states: tuple[Project, States]
) -> None:
    project, state = states
    power = _svg(_get(client, f"/runs/{state.constant.id}", {**project.read, **HTML}), "power")
    plot = re.search(r'class="plot-bg" x="[^"]+" y="([^"]+)" width="[^"]+" height="([^"]+)"', power)
    assert plot is not None
    top, height = float(plot.group(1)), float(plot.group(2))
    lines = re.findall(r'<polyline class="mean" points="([^"]+)"', power)
    assert len(lines) == state.constant.devices
    for points in lines:
        ys = {float(p.split(",")[1]) for p in points.split()}
        assert len(ys) == 1  # constant
        (y,) = ys
        assert top + 0.05 * height < y < top + height  # below the top border, above the axis
    ticks = [float(t.replace(",", "")) for t in re.findall(r'class="tick y"[^>]*>([^<]+)<', power)]
    assert max(ticks) > CONSTANT_W  # the axis goes past the line


def test_a_reason_is_printed_once_per_card(app: FastAPI, client: TestClient) -> None:
    from tests.pages.seed import seed_run

    project = make_project(app)  # no region: carbon and cost all lack it, for one reason
    run = seed_run(client, project.every, name="bare", devices=1, duration_s=60.0)
    reason = "the project has no region configured"
    html = _get(client, f"/runs/{run.id}", {**project.read, **HTML})
    carbon = re.search(r'<section id="carbon">.*?</section>', html, re.S)
    assert carbon is not None
    assert carbon.group(0).count(reason) == 1
    assert "not available (the same reason as above)" in carbon.group(0)
    assert "not priced (the same reason as above)" in carbon.group(0)
    assert "(the reason above)" in carbon.group(0)  # the basis statement refers to it too
    listing = _get(client, "/runs", {**project.read, **HTML})
    totals = re.search(r'<section class="totals".*?</section>', listing, re.S)
    assert totals is not None
    shown = re.sub(r"<[^>]+>", " ", totals.group(0))  # the text a reader sees
    assert shown.count(reason) == 1
    assert shown.count("(the same reason)") == 2
    assert totals.group(0).count(f'title="{reason}') == 2  # the others' tooltips name it
