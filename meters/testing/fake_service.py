"""An in-memory stand-in for the service's ingest API, for testing code that uploads.

`FakeService` is an ``httpx`` handler: hand it to ``httpx.MockTransport`` and give that transport
to an `Uploader` (``transport=``) or to anything that takes one. It follows the real service's
rules where the uploader's correctness depends on them:

- ``PUT /api/v1/runs/{id}`` declares a run (201 the first time, 200 after); any other call on an
  undeclared run is a 404;
- ``POST …/chunks`` is idempotent by (run, device key, seq) and content hash: a repeat is
  acknowledged as ``duplicate``, a different body under a stored key is a 409, and a batch is
  all-or-nothing;
- ``…/finish`` and ``…/fail`` end a run once; a different second end is a 409;
- JSON and the columnar binary batch (`meters.wire`) are both accepted.

It also records what it was asked (`log`, `count`) and can be told to fail: a list of `faults`
(functions that may answer a request in its place, e.g. `once`) and per-chunk refusals
(`refuse`). Example::

    service = FakeService()
    service.faults.append(once(httpx.Response(503), on="chunks"))
    with Uploader(spool, control, api_url=..., token=..., transport=httpx.MockTransport(service)):
        ...
    assert service.count("chunks") == 2
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..wire import BINARY_CONTENT_TYPE, content_hash, loads_binary_batch

__all__ = ["FakeService", "Fault", "once"]

_RUN_PATH = re.compile(r"^/api/v1/runs/([0-9a-f-]{36})(?:/(\w+))?$")

#: A function that may answer a request in the service's place (None: let the service answer).
Fault = Callable[[httpx.Request], httpx.Response | None]


@dataclass
class FakeService:
    """The ingest API in memory (idempotent by key and hash), recording and failing on request.

    Attributes:
        runs: Declared runs by id: the body of the first ``PUT``.
        chunks: Stored chunks: (run id, device key, seq) → content hash.
        ends: Ended runs: id → (``finished`` | ``failed``, exit code).
        phases: Phases by (run id, name, t0_s) → body.
        work: Declared work by run id → body.
        log: Every request as (method, action), action ``run`` for the run itself.
        faults: Consulted in order before the service answers; the first response wins.
        refuse: (device key, seq) → (status, whether the answer names the field): that chunk's
            batch is refused with this status.
    """

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunks: dict[tuple[str, str, int], str] = field(default_factory=dict)
    ends: dict[str, tuple[str, Any]] = field(default_factory=dict)
    phases: dict[tuple[str, str, float], dict[str, Any]] = field(default_factory=dict)
    work: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    refuse: dict[tuple[str, int], tuple[int, bool]] = field(default_factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer one request (the ``httpx.MockTransport`` handler)."""
        match = _RUN_PATH.match(request.url.path)
        if match is None:
            return httpx.Response(404, json={"detail": f"no route {request.url.path}"})
        run_id, action = match.group(1), match.group(2) or ""
        self.log.append((request.method, action or "run"))
        for fault in list(self.faults):
            response = fault(request)
            if response is not None:
                return response
        if request.headers.get("Content-Type") == BINARY_CONTENT_TYPE:
            body: Any = loads_binary_batch(request.content)
        else:
            body = json.loads(request.content) if request.content else {}
        if request.method == "PUT":
            created = run_id not in self.runs
            self.runs.setdefault(run_id, body)
            return httpx.Response(201 if created else 200, json={"id": run_id})
        if run_id not in self.runs:
            return httpx.Response(404, json={"detail": f"no run {run_id}", "field": None})
        if action == "chunks":
            return self._ingest(run_id, body)
        if action == "phases":
            self.phases[(run_id, body["name"], body["t0_s"])] = body
            return httpx.Response(201, json=body)
        if action == "work":
            self.work[run_id] = body
            return httpx.Response(200, json=body)
        if action not in ("finish", "fail"):
            return httpx.Response(404, json={"detail": f"no route {request.url.path}"})
        end = ("finished" if action == "finish" else "failed", body.get("exit_code"))
        if run_id in self.ends and self.ends[run_id] != end:
            return httpx.Response(409, json={"detail": "already ended", "field": "status"})
        self.ends[run_id] = end
        return httpx.Response(200, json={"status": end[0]})

    def _ingest(self, run_id: str, batch: dict[str, Any]) -> httpx.Response:
        device_keys = {d["key"] for d in batch["devices"]}
        acks = []
        new: dict[tuple[str, str, int], str] = {}
        for i, chunk in enumerate(batch["chunks"]):
            if chunk["device_key"] not in device_keys:
                where = f"chunks[{i}].device_key"
                return httpx.Response(422, json={"detail": "unknown device", "field": where})
            refusal = self.refuse.get((chunk["device_key"], chunk["seq"]))
            if refusal is not None:
                status, named = refusal
                field_name = f"chunks[{i}].max_power_w" if named else None
                return httpx.Response(status, json={"detail": "refused", "field": field_name})
            key = (run_id, chunk["device_key"], chunk["seq"])
            digest = content_hash(chunk)
            stored = self.chunks.get(key, new.get(key))
            if stored is not None and stored != digest:
                return httpx.Response(409, json={"detail": "conflict", "field": f"chunks[{i}]"})
            if stored is None:
                new[key] = digest
            acks.append(
                {
                    "device_key": chunk["device_key"],
                    "seq": chunk["seq"],
                    "status": "duplicate" if stored is not None else "stored",
                }
            )
        self.chunks.update(new)
        return httpx.Response(200, json={"chunks": acks})

    def count(self, action: str) -> int:
        """How many requests had this action (``run``, ``chunks``, ``finish`` …)."""
        return sum(1 for _, a in self.log if a == action)


def once(response: httpx.Response | Exception, *, on: str | None = None) -> Fault:
    """A fault that fires on the next request (with ``on``: the next with that action).

    Args:
        response: What to answer, or an exception to raise (e.g. ``httpx.ConnectError``).
        on: Only a request whose path ends in ``/<on>`` fires it (``chunks``, ``finish`` …).
    """
    fired = False

    def fault(request: httpx.Request) -> httpx.Response | None:
        nonlocal fired
        if fired or (on is not None and not request.url.path.endswith("/" + on)):
            return None
        fired = True
        if isinstance(response, Exception):
            raise response
        return response

    return fault
