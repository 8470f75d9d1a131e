"""Fuzzing the OpenAPI schema in process: never a 5xx, never a partial write, invariants kept.

Schemathesis (4.x) loads the app's own ``/openapi.json`` over ASGI and generates requests for
every operation, valid ones (``positive``) and invalid ones (``negative``), bounded by
`MAX_EXAMPLES` per operation and mode, derandomised so CI sees the same cases every time.
Path parameters are half the time those of real rows (a run with chunks and a phase, the
project, a throw-away token), so the fuzzer reaches past the 404s into the handlers; requests
go with a token drawn from every scope (and none).

Checked for every request: no 5xx (schemathesis's ``not_a_server_error``, which prints a curl
reproducer); a refused write (4xx) changed nothing (a fingerprint of every table, taken before
and after). Checked at the end: `tests.faults.harness.ledger_problems` (no chunk without its
device and run, running totals equal to the chunk sums, phase totals equal to a rebuild).

The hand-picked bad inputs are ``tests/service/test_no_500.py``; this covers what nobody
thought of.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err

from tests.faults.harness import fingerprint, ledger_problems
from tests.support.builders import batch, chunk
from tests.support.client import OPERATOR_TOKEN, TestClient, bearer, create_run, make_project
from tests.support.client import Project as Tokens

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

MAX_EXAMPLES = 15
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _fingerprint(app: FastAPI) -> dict[str, Any]:
    """Row counts of every table, plus every run's row and every running total."""
    return fingerprint(app.state.engine)


def _seed(app: FastAPI, client: TestClient) -> tuple[Tokens, dict[str, Any]]:
    """A project with tokens, a run with chunks on two devices and a phase, and a token to
    revoke; returns the tokens and the path parameters of those rows."""
    tokens = make_project(app)
    run_id = create_run(client, tokens)
    body = batch([chunk(s, device_index=d) for d in range(2) for s in range(3)])
    response = client.post(f"/api/v1/runs/{run_id}/chunks", json=body, headers=tokens.ingest)
    assert response.status_code == 200, response.text
    phase = {"name": "train", "t0_s": 1_760_000_005.0, "t1_s": 1_760_000_025.0}
    response = client.post(f"/api/v1/runs/{run_id}/phases", json=phase, headers=tokens.ingest)
    assert response.status_code in (200, 201), response.text
    victim = client.post(
        f"/api/v1/projects/{tokens.slug}/tokens",
        json={"name": "victim", "scopes": ["read"]},
        headers=tokens.admin,
    )
    assert victim.status_code in (200, 201), victim.text
    known = {"run_id": run_id, "slug": tokens.slug, "token_id": victim.json()["id"]}
    return tokens, known


def test_fuzzed_requests_never_answer_5xx_nor_write_partially(app: FastAPI) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    tokens, known = _seed(app, client)
    auths = st.sampled_from(
        [tokens.every, tokens.every, tokens.every, bearer(OPERATOR_TOKEN), tokens.read, {}]
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    partial: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the schema the app serves is broken
        operation = result.ok()
        operations += 1
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in known.items() if k in names}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            cases = operation.as_strategy(mode)
            if fixed:
                # real rows half the time; a token id only ever the throw-away one
                fixed_cases = operation.as_strategy(mode, path_parameters=fixed)
                cases = fixed_cases if "token_id" in fixed else st.one_of(cases, fixed_cases)
            try:
                _fuzz(app, operation.label, cases, auths, partial)
            except Unsatisfiable:
                # nothing to make invalid (no parameters, no body): the positive run covered it
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert operations >= 10  # the schema loaded and lists the API
    assert not partial, "\n".join(partial[:10])
    assert ledger_problems(app.state.settings.database_url) == []


def _fuzz(
    app: FastAPI,
    label: str,
    cases: st.SearchStrategy[schemathesis.Case[Any]],
    auths: st.SearchStrategy[dict[str, str]],
    partial: list[str],
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, auth=auths)
    def one(case: schemathesis.Case[Any], auth: dict[str, str]) -> None:
        write = case.method.upper() in WRITES
        before = _fingerprint(app) if write else None
        response = case.call(headers=auth)
        case.validate_response(response, checks=[not_a_server_error])
        if before is not None and 400 <= response.status_code < 500:
            after = _fingerprint(app)
            if after != before:
                partial.append(
                    f"{label}: {response.status_code} but the database changed: "
                    f"{case.as_curl_command()}"
                )

    one()


def test_the_fingerprint_sees_a_write(app: FastAPI) -> None:
    """The partial-write check can fail: a stored chunk changes the fingerprint."""
    client = TestClient(app, raise_server_exceptions=False)
    tokens, known = _seed(app, client)
    before = _fingerprint(app)
    response = client.post(
        f"/api/v1/runs/{known['run_id']}/chunks", json=batch([chunk(3)]), headers=tokens.ingest
    )
    assert response.status_code == 200
    assert _fingerprint(app) != before
    assert uuid.UUID(known["run_id"])


# --------------------------------------------------------------------------- what it found


def test_a_declared_dtype_outside_the_catalog_still_gets_a_report(app: FastAPI) -> None:
    """Found by the fuzzer: work declared in a precision the hardware catalog has no peak for
    (``int8``, which `meters.api.Meter.add_flops` accepts) made every report of the run a 500.
    The report must say the bounds are unavailable, and why, instead."""
    client = TestClient(app, raise_server_exceptions=False)
    tokens, known = _seed(app, client)
    run = f"/api/v1/runs/{known['run_id']}"
    work = {"flops": {"value": 1e15, "unit": "FLOP"}, "dtype": "int8"}
    assert client.post(f"{run}/work", json=work, headers=tokens.ingest).status_code == 200
    response = client.get(f"{run}/report", headers=tokens.read)
    assert response.status_code == 200, response.text
    assert any("int8" in note for note in response.json()["notes"])
