"""kill -9 of a meter: after a restart its spool replays; no chunk is lost or stored twice.

A ``thermoledger sidecar`` process streams to the service and is SIGKILLed — once while it
uploads (a request may be cut after the service stored it: its repeat must be a duplicate, not
a second row), once while the service is down (sealed chunks wait in the spool). A new sidecar
with the same run id and spool resumes the numbering and sends what the dead one left.

What the spool holds after a kill -9 (hashes intact, at most the unsealed tail lost, numbering
resumed) is ``tests/meters/test_crash.py``; this test adds the upload of that spool.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.faults.harness import (
    LiveService,
    Sidecar,
    gaps_in_order,
    ledger_problems,
    sidecars,
    stored_energy_j,
    stored_seqs,
    wait_until,
)

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time


@pytest.mark.parametrize("service_down", [False, True], ids=["uploading", "service-down"])
def test_a_killed_meter_replays_its_spool_after_a_restart(
    service: LiveService, tmp_path: Path, service_down: bool
) -> None:
    first = Sidecar(service, tmp_path / "spool")
    with sidecars([first]):
        first.start()
        wait_until(lambda: first.counts()[1] >= 3, "the first acknowledgements")
        if service_down:
            service.server.kill()
            wait_until(lambda: first.counts()[0] >= 3, "chunks waiting for the service")
        first.kill()
        pending, acked = first.counts()
        assert pending + acked > 0
        if service_down:
            assert pending >= 3  # left for the next meter to send
            service.server.start()
        left = {key: [seq for seq, _ in chunks] for key, chunks in first.spooled().items()}

        second = Sidecar(service, first.spool_dir, run_id=first.run_id)
        with sidecars([second]):
            second.start()
            wait_until(
                lambda: all(len(v) > len(left[k]) + 2 for k, v in second.spooled().items()),
                "the restarted meter's own chunks",
            )
            second.stop()

    stored = stored_seqs(service.database_url)
    assert not gaps_in_order(stored)  # numbering resumed: 0..n-1 across both processes
    spooled = second.spooled()
    assert second.counts()[0] == 0
    assert {key for _, key in stored} == spooled.keys() == left.keys()
    for key, chunks in spooled.items():
        seqs = [seq for seq, _ in chunks]
        assert seqs[: len(left[key])] == left[key]  # what the dead meter sealed, kept
        assert stored[(first.run_id, key)] == seqs
    spooled_j = math.fsum(e for chunks in spooled.values() for _, e in chunks)
    assert stored_energy_j(service.database_url)[first.run_id] == pytest.approx(
        spooled_j, rel=1e-12
    )
    report = service.get(f"runs/{first.run_id}/report")
    assert report["energy"]["total"]["energy_j"] == pytest.approx(spooled_j, rel=1e-9)
    assert report["run"]["status"] == "finished"
    assert ledger_problems(service.database_url) == []
