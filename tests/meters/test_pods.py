"""Per-pod attribution on a node: a real gRPC fake kubelet, the fake NVML, real Meters.

Polls are driven by calling `PodAttribution.sync` directly; the Meters sample on the real
clock with short intervals, and waits are polled and bounded. Nothing asserts on durations:
the energy check is an identity (every GPU's energy over its runs, plus its power times the
measured switch-over gaps, is its energy over the whole time), and the gaps are reported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.meters.fake_kubelet import FakeKubelet, Pod, gpu_pod, short_dir
from tests.support.waiting import wait_until
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.k8s import DeviceAllocation, PodResourcesClient
from thermoledger.meters.metrics import serve_attribution_metrics
from thermoledger.meters.pods import (
    Assignment,
    NodeGpu,
    PodAttribution,
    PodKey,
    PodSettings,
    assign,
)
from thermoledger.meters.runid import canonical_run_id
from thermoledger.meters.settings import MeterSettings, SettingsError
from thermoledger.meters.spool import Spool
from thermoledger.meters.summary import render_attribution
from thermoledger.meters.testing.fake_pynvml import FakeGpu, FakeNvml, a100, h100
from thermoledger.meters.testing.fake_service import FakeService
from thermoledger.meters.wire import decode_column

NODE = "gpu-node-7"
BASE = "k8s-node:gpu-node-7:0b5c5a9e-0000-4000-8000-000000000001"
GPU = [f"GPU-{i:08x}-1111-2222-3333-444455556666" for i in range(4)]
POWER_W = [100.0, 200.0, 300.0, 400.0]
MIG = "MIG-0a1b2c3d-0000-4000-8000-000000000009"


class Clock:
    """A monotonic clock the test moves (for the kubelet's staleness)."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield path


@pytest.fixture
def kubelet(sockets: Path) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(sockets / "kubelet.sock").start()
    yield fake
    fake.stop()


def fake_nvml(*, mig_on: int | None = None) -> FakeNvml:
    gpus: list[FakeGpu] = []
    for i, (uid, watts) in enumerate(zip(GPU, POWER_W, strict=True)):
        if i == mig_on:
            gpus.append(a100(uuid=uid, profile=steady(watts), mig_devices=(MIG,)))
        else:
            gpus.append(h100(uuid=uid, profile=steady(watts)))
    return FakeNvml(gpus)


class Node:
    """One attribution under test, with what it needs to be looked at."""

    def __init__(
        self,
        spool_dir: Path,
        socket_path: Path,
        nvml: FakeNvml,
        *,
        clock: Clock | None = None,
        **options: Any,
    ) -> None:
        self.spool_dir = spool_dir
        self.client = PodResourcesClient(socket_path, timeout_s=10.0)
        self.opened: list[tuple[int | str, ...] | None] = []
        self.log = logging.getLogger("test.pods")

        def open_devices(gpus: Any) -> NvmlBackend:
            self.opened.append(None if gpus is None else tuple(gpus))
            return NvmlBackend(nvml=nvml, gpus=gpus)

        settings = options.pop("settings", None) or MeterSettings(
            spool_dir=spool_dir, interval_s=0.02, chunk_s=0.1
        )
        self.attribution = PodAttribution(
            settings,
            node=NODE,
            base_run_id=BASE,
            list_devices=self.client.list_devices,
            open_devices=open_devices,
            tags={"team": "ml"},
            env={},
            logger=self.log,
            monotonic=clock or Clock(),
            **options,
        )

    def run_of(self, namespace: str, pod: str) -> str:
        return self.attribution.pod_run_id(PodKey(namespace, pod))

    def devices_of(self) -> dict[str, set[str]]:
        return {
            run_id: {d["uid"] for d in meter.devices}
            for run_id, meter in self.attribution.meters().items()
        }

    def wait_for_samples(self, n: int = 3) -> None:
        def sampled() -> bool:
            meters = self.attribution.meters().values()
            return all(d.samples >= n for m in meters for d in m.summary().devices) and all(
                m.summary().devices for m in meters
            )

        wait_until(sampled, f"{n} samples in every running meter")

    def close(self) -> None:
        self.attribution.stop()
        self.client.close()


@pytest.fixture
def node(tmp_path: Path, kubelet: FakeKubelet) -> Iterator[Node]:
    made = Node(tmp_path / "spool", kubelet.socket_path, fake_nvml())
    yield made
    made.close()


# -- who holds what -------------------------------------------------------------------------------

NODE_GPUS = [NodeGpu(uid, i) for i, uid in enumerate(GPU)]


def rows(
    namespace: str, pod: str, *devices: str, container: str = "main"
) -> list[DeviceAllocation]:
    return [DeviceAllocation(namespace, pod, container, "nvidia.com/gpu", d) for d in devices]


def test_whole_gpus_go_to_their_pod_and_the_rest_to_unallocated() -> None:
    a = PodKey("ml", "a")
    found = assign(
        [
            *rows("ml", "a", GPU[1], container="train"),
            *rows("ml", "a", GPU[0].lower(), container="eval"),  # UUIDs match case-insensitively
            *rows("ml", "b", "2"),  # the device plugin's index id strategy
            DeviceAllocation("ml", "c", "main", "example.com/fpga", GPU[3]),  # not NVIDIA's
        ],
        NODE_GPUS,
    )
    assert found == Assignment(
        pods={a: frozenset(GPU[:2]), PodKey("ml", "b"): frozenset({GPU[2]})},
        containers={a: ("eval", "train"), PodKey("ml", "b"): ("main",)},
        unallocated=frozenset({GPU[3]}),
        notes=(),
    )


def test_gpus_that_cannot_be_split_stay_unallocated_with_a_note() -> None:
    parents = {MIG: GPU[0]}
    found = assign(
        [
            *rows("ml", "mig-user", MIG),
            *rows("ml", "sliced-1", f"{GPU[1]}::0"),
            *rows("ml", "sliced-2", f"{GPU[1]}::1"),
            *rows("ml", "twin-1", GPU[2]),
            *rows("ml", "twin-2", GPU[2]),
            *rows("ml", "stranger", "GPU-not-on-this-node"),
            *rows("ml", "whole", GPU[3]),
        ],
        NODE_GPUS,
        mig_parent=parents.get,
    )
    assert found.pods == {PodKey("ml", "whole"): frozenset({GPU[3]})}
    assert found.unallocated == frozenset(GPU[:3])
    text = "\n".join(message for _, message in found.notes)
    assert f"MIG device {MIG} of GPU {GPU[0]}" in text
    assert f"{GPU[1]}::0, a shared replica of GPU {GPU[1]}" in text
    assert f"GPU {GPU[2]} is listed for several pods (ml/twin-1, ml/twin-2)" in text
    assert "'GPU-not-on-this-node', which names no GPU" in text
    assert all("unallocated" in message for _, message in found.notes)
    # A MIG device whose parent NVML does not know is an unknown id, not a crash.
    unknown = assign(rows("ml", "mig-user", MIG), NODE_GPUS, mig_parent=lambda _: None)
    assert unknown.unallocated == frozenset(GPU)
    assert "names no GPU" in unknown.notes[0][1]


def test_a_gpu_held_whole_and_shared_is_not_given_to_the_pod() -> None:
    found = assign([*rows("ml", "a", GPU[0]), *rows("ml", "b", f"{GPU[0]}::1")], NODE_GPUS)
    assert found.pods == {}
    assert GPU[0] in found.unallocated
    assert any(key == f"mixed:{GPU[0]}" for key, _ in found.notes)


def test_pod_settings_come_from_flags_then_the_environment() -> None:
    env = {
        "THERMOLEDGER_POD_RESOURCES_SOCKET": "/relay/kubelet.sock",
        "THERMOLEDGER_POD_POLL_S": "2.5",
        "THERMOLEDGER_NODE_NAME": NODE,
    }
    assert PodSettings.resolve(env=env) == PodSettings("/relay/kubelet.sock", 2.5, NODE)
    assert PodSettings.resolve(env=env, poll_s=1.0, node="other").poll_s == 1.0
    with pytest.raises(SettingsError, match="THERMOLEDGER_POD_POLL_S"):
        PodSettings.resolve(env={"THERMOLEDGER_POD_POLL_S": "often"})
    with pytest.raises(SettingsError, match="poll_s"):
        PodSettings.resolve(env={}, poll_s=0.0)


def test_the_production_wiring_refuses_a_gpu_selection_and_simulated_devices() -> None:
    pods = PodSettings("/nowhere.sock", 5.0, NODE)
    with pytest.raises(SettingsError, match="every GPU of the node"):
        PodAttribution.for_node(MeterSettings(gpus=(0,)), pods, base_run_id=BASE)
    with pytest.raises(SettingsError, match="nvml backend, not simulated"):
        PodAttribution.for_node(MeterSettings(backend="simulated"), pods, base_run_id=BASE)


# -- runs on a node -------------------------------------------------------------------------------


def test_each_pod_gets_a_run_with_exactly_its_gpus(node: Node, kubelet: FakeKubelet) -> None:
    kubelet.pods = [
        Pod(
            "ml",
            "trainer-0",
            [("train", [("nvidia.com/gpu", [GPU[0]])]), ("eval", [("nvidia.com/gpu", [GPU[1]])])],
        ),
        gpu_pod("serve", "api-7f9", GPU[2]),
        Pod("kube-system", "coredns"),
    ]
    node.attribution.start()
    trainer, api = node.run_of("ml", "trainer-0"), node.run_of("serve", "api-7f9")
    unallocated = node.attribution.unallocated_run_id
    assert node.devices_of() == {
        trainer: {GPU[0], GPU[1]},
        api: {GPU[2]},
        unallocated: {GPU[3]},
    }
    assert trainer == canonical_run_id(f"{canonical_run_id(BASE)}/pod/ml/trainer-0")
    node.wait_for_samples()
    with Spool.in_directory(node.spool_dir) as spool:
        meta = {r.run_id: r.metadata for r in spool.runs()}
        assert meta[trainer]["name"] == "ml/trainer-0"
        assert meta[trainer]["kind"] == "other"
        assert meta[trainer]["tags"] == {
            "team": "ml",
            "k8s.node": NODE,
            "k8s.namespace": "ml",
            "k8s.pod": "trainer-0",
            "k8s.containers": "eval,train",
            "k8s.attribution": "pod",
        }
        assert meta[unallocated]["name"] == f"{NODE} (unallocated GPUs)"
        assert meta[unallocated]["tags"]["k8s.attribution"] == "unallocated"
        # Device keys name the node, so two nodes' GPUs never collide within a run.
        assert {d["key"] for d in spool.devices(api)} == {f"{NODE}/{GPU[2]}"}
    # Nothing changed: a sync leaves every meter alone.
    meters = node.attribution.meters()
    report = node.attribution.sync()
    assert report.listed
    assert report.started == report.stopped == ()
    assert node.attribution.meters() == meters


def test_a_vanished_pod_is_finished_and_its_gpu_goes_to_unallocated(
    node: Node, kubelet: FakeKubelet
) -> None:
    kubelet.pods = [gpu_pod("ml", "a", GPU[0]), gpu_pod("ml", "b", GPU[1])]
    node.attribution.start()
    b = node.run_of("ml", "b")
    unallocated = node.attribution.unallocated_run_id
    node.wait_for_samples()
    kubelet.pods = [gpu_pod("ml", "a", GPU[0])]
    report = node.attribution.sync()
    assert set(report.stopped) == {b, unallocated}
    assert report.started == (unallocated,)
    assert node.devices_of() == {node.run_of("ml", "a"): {GPU[0]}, unallocated: set(GPU[1:])}
    with Spool.in_directory(node.spool_dir) as spool:
        assert spool.run_status(b).status == "finished"  # type: ignore[union-attr]
        assert spool.run_status(b).exit_code is None  # type: ignore[union-attr]
        assert spool.run_status(unallocated).status == "running"  # type: ignore[union-attr]
        # Its last chunk is flushed to the spool, not lost with the meter.
        assert spool.chunks(b)
    assert node.attribution.totals[b].energy_j > 0


def test_gpus_moving_between_pods_stop_the_old_meter_and_start_the_new(
    node: Node, kubelet: FakeKubelet
) -> None:
    kubelet.pods = [gpu_pod("ml", "old", GPU[0], GPU[1])]
    node.attribution.start()
    old = node.run_of("ml", "old")
    node.wait_for_samples()
    kubelet.pods = [gpu_pod("ml", "new", GPU[1]), gpu_pod("ml", "other", GPU[0])]
    report = node.attribution.sync()
    new, other = node.run_of("ml", "new"), node.run_of("ml", "other")
    assert report.stopped == (old,)
    assert set(report.started) == {new, other}
    assert node.devices_of() == {
        new: {GPU[1]},
        other: {GPU[0]},
        node.attribution.unallocated_run_id: {GPU[2], GPU[3]},  # untouched: same meter
    }
    # The new meters opened only their own GPU, by UUID.
    assert set(node.opened[-2:]) == {(GPU[0],), (GPU[1],)}


def _chunks_by_gpu(spool_dir: Path, run_ids: set[str]) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {uid: [] for uid in GPU}
    with Spool.in_directory(spool_dir) as spool:
        for run_id in run_ids:
            for chunk in spool.chunks(run_id):
                uid = chunk.payload["device_key"].split("/", 1)[1]
                out[uid].append((run_id, chunk.payload))
    for chunks in out.values():
        chunks.sort(key=lambda item: item[1]["t0_s"])
    return out


def _column(chunk: Any, name: str) -> Any:
    column = chunk["samples"][name]
    return decode_column(column) if isinstance(column, str) else column


def _counter(chunk: Any, at: int) -> float:
    """The raw energy counter of one sample of a chunk, J."""
    return float(_column(chunk, "energy_j")[at])


def test_pods_and_unallocated_add_up_to_the_node_less_the_switch_gaps(
    node: Node, kubelet: FakeKubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per GPU: no instant in two runs, and the runs' energy is the counter's rise over them.

    The fake's counters are exact, so these hold to rounding however loaded the machine: each
    chunk's energy is the rise of the GPU's counter between its first sample and its end (the
    next chunk's first sample, or its own last one when flushed), and between two runs' chunks
    lies a switch-over gap, never an overlap. The node's energy on a GPU (the counter's rise
    from its first sample to its last) is then the runs' energy plus the gaps' rise.
    """
    steps: list[list[Pod]] = [
        [gpu_pod("ml", "a", GPU[0], GPU[1]), gpu_pod("ml", "b", GPU[2])],
        [gpu_pod("ml", "a", GPU[0], GPU[1]), gpu_pod("ml", "c", GPU[3])],  # b gone, c comes
        [gpu_pod("ml", "c", GPU[3]), gpu_pod("ml", "d", GPU[1])],  # a gone, d takes GPU 1
        [],  # every pod gone
    ]
    switches: list[float] = []
    for i, pods in enumerate(steps):
        kubelet.pods = pods
        report = node.attribution.start().sync() if i == 0 else node.attribution.sync()
        switches.append(report.switch_s)
        node.wait_for_samples()
    totals = node.attribution.stop()
    runs = set(totals)
    assert runs == {node.run_of("ml", p) for p in "abcd"} | {node.attribution.unallocated_run_id}
    by_gpu = _chunks_by_gpu(node.spool_dir, runs)
    gaps_s: list[float] = []
    node_j = runs_j = gaps_j = 0.0
    checked = 0
    for uid in GPU:
        chunks = by_gpu[uid]
        assert chunks, uid
        assert all(c["method"] == "counter" for _, c in chunks)
        # The counter where each chunk ends, where a stored sample shows it: the next chunk's
        # first sample (the bridge), or the chunk's own last sample when it was flushed.
        ends: list[float | None] = []
        for k, (run, chunk) in enumerate(chunks):
            after = chunks[k + 1] if k + 1 < len(chunks) else None
            own_last_s = float(_column(chunk, "t_s")[-1])
            if after is not None and after[0] == run and after[1]["t0_s"] == chunk["t1_s"]:
                ends.append(_counter(after[1], 0))
            elif chunk["t1_s"] == own_last_s:
                ends.append(_counter(chunk, -1))
            else:
                ends.append(None)  # its bridge opened a chunk too short to keep: a stop
        for (_, chunk), end in zip(chunks, ends, strict=True):
            runs_j += chunk["energy_j"]
            if end is not None:
                assert chunk["energy_j"] == pytest.approx(end - _counter(chunk, 0), abs=1e-6)
                checked += 1
        for (run_a, a), (run_b, b), end in zip(chunks, chunks[1:], ends, strict=False):
            if run_a == run_b and b["t0_s"] == a["t1_s"]:
                continue  # one meter's chunks tile its time
            assert b["t0_s"] >= a["t1_s"], f"{uid}: two runs metered the same instant"
            gaps_s.append(b["t0_s"] - a["t1_s"])
            # Where the chunk before the gap ends, the counter read its first sample plus the
            # energy it holds (checked above for every chunk whose end was stored).
            known_end = end if end is not None else _counter(a, 0) + a["energy_j"]
            assert _counter(b, 0) >= known_end
            gaps_j += _counter(b, 0) - known_end
        last = chunks[-1][1]
        last_end = ends[-1] if ends[-1] is not None else _counter(last, 0) + last["energy_j"]
        node_j += last_end - _counter(chunks[0][1], 0)
    assert checked >= len(by_gpu) * 2
    # Runs + gaps = node: every joule the counters saw is in one run, or in a switch gap.
    assert runs_j + gaps_j == pytest.approx(node_j, abs=1e-6)
    assert math.fsum(t.energy_j for t in totals.values()) == pytest.approx(runs_j, abs=1e-6)
    # A gap per switch of a GPU: GPU 0 (a → unallocated), GPU 1 (a → d → unallocated), GPU 2
    # (b → unallocated), GPU 3 (unallocated → c → unallocated), and each restart of the
    # unallocated run for the GPUs that stay in it (GPU 3 at step 2, GPU 2 at steps 3 and 4).
    assert len(gaps_s) == 9
    with capsys.disabled():
        print(
            f"\nswitch-over gaps at a 20 ms interval: {len(gaps_s)}, mean "
            f"{1e3 * sum(gaps_s) / len(gaps_s):.1f} ms, max {1e3 * max(gaps_s):.1f} ms; "
            f"switches {', '.join(f'{1e3 * s:.1f}' for s in switches)} ms"
        )


def test_a_restarted_meter_resumes_the_same_runs(tmp_path: Path, kubelet: FakeKubelet) -> None:
    kubelet.pods = [gpu_pod("ml", "a", GPU[0])]
    nvml = fake_nvml()
    first = Node(tmp_path / "spool", kubelet.socket_path, nvml)
    first.attribution.start()
    before = first.devices_of()
    first.wait_for_samples()
    first.close()
    with Spool.in_directory(tmp_path / "spool") as spool:
        seqs = spool.next_seqs(first.run_of("ml", "a"))
    second = Node(tmp_path / "spool", kubelet.socket_path, nvml)
    try:
        second.attribution.start()
        assert second.devices_of() == before  # same run ids, same GPUs
        second.wait_for_samples()
        run = second.run_of("ml", "a")
        summary = second.attribution.meters()[run].summary()
        assert summary.spool_errors == summary.dropped == 0
    finally:
        second.close()
    with Spool.in_directory(tmp_path / "spool") as spool:
        assert spool.run_status(run).status == "finished"  # type: ignore[union-attr]
        resumed = spool.next_seqs(run)
        key = f"{NODE}/{GPU[0]}"
        assert resumed[key] > seqs[key]  # numbering went on, no seq reused
        # Both meters' chunks are there under one run.
        stored = [c.key.seq for c in spool.chunks(run, key)]
        assert min(stored) < seqs[key] <= max(stored)
        assert len(stored) == len(set(stored))


def test_a_missing_socket_meters_the_node_as_unallocated_and_says_so_once(
    tmp_path: Path, sockets: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sockets / "later" / "kubelet.sock"
    made = Node(tmp_path / "spool", path, fake_nvml())
    try:
        with caplog.at_level(logging.INFO, logger="test.pods"):
            made.attribution.start()
            unallocated = made.attribution.unallocated_run_id
            assert made.devices_of() == {unallocated: set(GPU)}
            for _ in range(3):
                report = made.attribution.sync()
                assert not report.listed
                assert str(path) in (report.error or "")
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "does not exist" in warnings[0]
        assert "every GPU is metered in the node's unallocated run" in warnings[0]
        assert not made.attribution.kubelet_up
        # The kubelet comes: the next poll splits the node.
        path.parent.mkdir()
        kubelet = FakeKubelet(path, pods=[gpu_pod("ml", "a", GPU[2])]).start()
        try:
            with caplog.at_level(logging.INFO, logger="test.pods"):
                assert made.attribution.sync().listed
            assert "answers again" in caplog.text
            assert made.devices_of() == {
                made.run_of("ml", "a"): {GPU[2]},
                unallocated: {GPU[0], GPU[1], GPU[3]},
            }
        finally:
            kubelet.stop()
    finally:
        made.close()


def test_a_silent_kubelet_keeps_the_last_answer_then_falls_back(
    tmp_path: Path, kubelet: FakeKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    kubelet.pods = [gpu_pod("ml", "a", GPU[0])]
    made = Node(
        tmp_path / "spool", kubelet.socket_path, fake_nvml(), clock=clock, stale_after_s=60.0
    )
    try:
        made.attribution.start()
        a = made.run_of("ml", "a")
        before = made.devices_of()
        kubelet.error = (grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
        with caplog.at_level(logging.WARNING, logger="test.pods"):
            report = made.attribution.sync()
            assert not report.listed
            assert report.stopped == ()
            clock.now_s += 59.0
            made.attribution.sync()
            assert made.devices_of() == before  # the last answer stands
            clock.now_s += 1.0
            report = made.attribution.sync()
            assert a in report.stopped
            assert made.devices_of() == {made.attribution.unallocated_run_id: set(GPU)}
            made.attribution.sync()
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, messages  # the outage, then the fallback: once each
        assert "the last answer stands for 60 s" in messages[0]
        assert "has not answered for 60 s" in messages[1]
    finally:
        made.close()


def test_mig_devices_leave_their_parent_in_the_unallocated_run(
    tmp_path: Path, kubelet: FakeKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet.pods = [
        Pod("ml", "slice", [("main", [("nvidia.com/mig-1g.10gb", [MIG])])]),
        gpu_pod("ml", "whole", GPU[0]),
    ]
    made = Node(tmp_path / "spool", kubelet.socket_path, fake_nvml(mig_on=1))
    try:
        with caplog.at_level(logging.WARNING, logger="test.pods"):
            made.attribution.start()
            made.attribution.sync()
        assert made.devices_of() == {
            made.run_of("ml", "whole"): {GPU[0]},
            made.attribution.unallocated_run_id: set(GPU[1:]),
        }
        notes = [r.getMessage() for r in caplog.records]
        assert len(notes) == 1, notes  # once, not per poll
        assert f"MIG device {MIG} of GPU {GPU[1]}" in notes[0]
    finally:
        made.close()


def test_one_uploader_sends_every_run_and_their_ends(tmp_path: Path, kubelet: FakeKubelet) -> None:
    service = FakeService()
    settings = MeterSettings(
        server="http://ledger.test",
        token="t0k",
        spool_dir=tmp_path / "spool",
        interval_s=0.02,
        chunk_s=0.1,
        upload_timeout_s=30.0,
    )
    made = Node(
        tmp_path / "spool",
        kubelet.socket_path,
        fake_nvml(),
        settings=settings,
        upload_transport=httpx.MockTransport(service),
    )
    kubelet.pods = [gpu_pod("ml", "a", GPU[0])]
    made.attribution.start()
    a, unallocated = made.run_of("ml", "a"), made.attribution.unallocated_run_id
    made.wait_for_samples()
    kubelet.pods = []
    made.attribution.sync()
    made.wait_for_samples()
    made.close()
    assert made.attribution.upload is not None
    assert made.attribution.upload.complete
    assert set(service.runs) == {a, unallocated}
    assert service.runs[a]["tags"]["k8s.pod"] == "a"
    assert service.ends == {a: ("finished", None), unallocated: ("finished", None)}
    with Spool.in_directory(tmp_path / "spool") as spool:
        stored = {
            (r, c.key.device_key, c.key.seq) for r in (a, unallocated) for c in spool.chunks(r)
        }
    assert stored
    assert stored <= set(service.chunks)


def test_metrics_cover_every_run_in_one_exposition(node: Node, kubelet: FakeKubelet) -> None:
    kubelet.pods = [gpu_pod("ml", "a", GPU[0]), gpu_pod("ml", "b", GPU[1])]
    node.attribution.start()
    node.wait_for_samples()
    server = serve_attribution_metrics(node.attribution, port=0, address="127.0.0.1")
    assert server is not None
    try:
        text = httpx.get(server.url, timeout=10.0).text
    finally:
        server.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert text.count("# TYPE thermoledger_gpu_energy_joules_total counter") == 1
    energy = {s.labels["run_id"]: s for s in families["thermoledger_gpu_energy_joules"].samples}
    assert set(energy) == {
        node.run_of("ml", "a"),
        node.run_of("ml", "b"),
        node.attribution.unallocated_run_id,
    }
    (up,) = families["thermoledger_k8s_pod_resources_up"].samples
    assert up.value == 1.0
    assert up.labels == {"node": NODE}


def test_the_summary_lists_every_run_and_the_node_total(node: Node, kubelet: FakeKubelet) -> None:
    kubelet.pods = [gpu_pod("ml", "a", GPU[0])]
    node.attribution.start()
    node.wait_for_samples()
    totals = node.attribution.stop()
    text = render_attribution(totals, title="node stopped", spool_dir=str(node.spool_dir))
    lines = text.splitlines()
    assert lines[0] == "node stopped"
    assert lines[2].split()[0] == "ml/a"
    assert lines[3].startswith(f"  {NODE} (unallocated GPUs)")
    node_total = float(lines[4].split()[2])
    assert node_total == pytest.approx(sum(t.energy_j for t in totals.values()), abs=0.01)
