"""kill -9 of the service while several meters stream: exactly once after it returns.

Four ``thermoledger sidecar`` processes (two simulated GPUs each, 0.2 s chunks) upload to one
service. The service is SIGKILLed mid-stream (requests in flight are cut, transactions open),
the meters keep sealing chunks into their spools while it is down, and it is restarted on the
same port and database. Then the spools must drain on their own, and after SIGTERM the database
must hold, per (run, device), seqs 0..n-1 with no gap and no repeat — exactly the chunks each
spool holds — with every run's total equal to the meter's own summary.

The single-meter version (in-process `meters.api.Meter`) is
``tests/e2e/test_meter_to_service.py::test_a_service_killed_mid_run_loses_nothing_and_counts_nothing_twice``;
this one adds concurrency between meters and real meter processes.
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

METERS = 4


def test_every_chunk_of_several_meters_is_stored_once_across_a_service_kill(
    service: LiveService, tmp_path: Path
) -> None:
    meters = [Sidecar(service, tmp_path / f"meter-{i}") for i in range(METERS)]
    with sidecars(meters):
        for meter in meters:
            meter.start()
        wait_until(lambda: all(m.counts()[1] >= 2 for m in meters), "every meter's first acks")
        for meter in meters:
            assert meter.alive()

        service.server.kill()  # SIGKILL: no shutdown; uploads in flight are cut
        down_at = {m.run_id: sum(m.counts()) for m in meters}
        wait_until(
            lambda: all(
                m.counts()[0] >= 4 and sum(m.counts()) >= down_at[m.run_id] + 4 for m in meters
            ),
            "chunks sealed while the service is down",
        )
        service.server.start()  # same port, same database

        # The meters find the service again on their own (backoff), before anyone stops them.
        at_restart = {m.run_id: sum(m.counts()) for m in meters}
        wait_until(
            lambda: all(m.counts()[1] >= at_restart[m.run_id] for m in meters),
            "the spools to drain after the restart",
        )
        summaries_j = {m.run_id: m.stop() for m in meters}

    stored = stored_seqs(service.database_url)
    assert not gaps_in_order(stored)
    for meter in meters:
        assert meter.counts()[0] == 0  # the spool drained
        spooled = meter.spooled()
        assert len(spooled) == meter.gpus
        for key, chunks in spooled.items():
            # nothing lost, nothing twice: the service holds exactly what the spool sealed
            assert stored[(meter.run_id, key)] == [seq for seq, _ in chunks]
    assert {run for run, _ in stored} == set(summaries_j)

    energy_j = stored_energy_j(service.database_url)
    for meter in meters:
        spooled_j = math.fsum(e for chunks in meter.spooled().values() for _, e in chunks)
        assert energy_j[meter.run_id] == pytest.approx(spooled_j, rel=1e-12)
        # the summary table prints two decimals
        assert energy_j[meter.run_id] == pytest.approx(summaries_j[meter.run_id], abs=0.006)
        report = service.get(f"runs/{meter.run_id}/report")
        assert report["energy"]["total"]["energy_j"] == pytest.approx(spooled_j, rel=1e-9)
        assert report["run"]["status"] == "finished"
    assert ledger_problems(service.database_url) == []
