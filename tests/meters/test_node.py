"""A whole node in one run: NVML GPUs, RAPL packages and DRAM read as one `NodeBackend`.

The fake NVML (steady profiles) and the fake powercap tree (counters moved by the test as time
passes, at a fixed power per zone) know the exact energy of every device; the real `Sampler`,
driven by hand on a `ManualClock`, must find it per device, per kind and for the node, without
counting a domain twice (RAPL's psys, the CPU inside a module-scope GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.meters.test_sampler_slow import INTERVAL_S, Sink, _clock, _relative, _run, _times
from thermoledger.accounting.integrate import covered_by
from thermoledger.meters.backends import (
    DeviceInfo,
    DeviceStatus,
    Readings,
    SimulatedBackend,
    SimulatedDevice,
    steady,
)
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.base import DeviceReader, FlatBuffer
from thermoledger.meters.backends.node import NodeBackend
from thermoledger.meters.backends.nvml import NvmlBackend
from thermoledger.meters.backends.rapl import RaplBackend
from thermoledger.meters.chunker import device_payload
from thermoledger.meters.discovery import Sources, open_backend
from thermoledger.meters.errors import NothingMeasurable
from thermoledger.meters.sampler import MeterSummary, Sampler
from thermoledger.meters.summary import render_summary
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_amdsmi import FakeAmdSmi, mi300x
from thermoledger.meters.testing.fake_hwmon import FakeHwmon
from thermoledger.meters.testing.fake_powercap import FakePowercap
from thermoledger.meters.testing.fake_pynvml import FakeNvml, SlowCall, h100

HOST = "node"
RUN = "node-run"
GPU_W = (300.0, 200.0)
# zone -> its power, W (packages 0 and 1 with their DRAM)
RAPL_W = {
    "intel-rapl:0": 95.0,
    "intel-rapl:0:1": 12.5,
    "intel-rapl:1": 80.0,
    "intel-rapl:1:1": 10.0,
}
PSYS_EXTRA_W = 40.0  # the platform draws this beside the packages and DRAM
NVML_MJ = 1e-3  # NVML's counter counts whole millijoules: each GPU is exact to 1 mJ


def _tree(root: Path, *, psys: bool = True) -> FakePowercap:
    tree = FakePowercap(root)
    tree.add_package(0, energy_uj=5_000_000, dram_energy_uj=7_000_000)
    tree.add_package(1, energy_uj=1_000_000, dram_energy_uj=2_000_000)
    if psys:
        tree.add_psys(2, energy_uj=9_000_000)
    return tree


class Node:
    """Fake NVML + fake powercap on one manual clock; `sleep` lets the RAPL zones draw power."""

    def __init__(self, tmp_path: Path, *, psys: bool = True) -> None:
        self.clock = ManualClock()
        self.nvml = FakeNvml([h100(profile=steady(w)) for w in GPU_W], clock=self.clock)
        self.psys = psys
        self.tree = _tree(tmp_path / "powercap", psys=psys)
        self.sources = Sources(
            nvml=self.nvml,
            powercap=self.tree.root,
            hwmon=tmp_path / "hwmon",
            read_text=self.tree.read_text,
            clock=self.clock,
            env={},
        )

    def sleep(self, dt_s: float) -> None:
        for zone, power_w in RAPL_W.items():
            self.tree.add_energy_j(zone, power_w * dt_s)
        if self.psys:
            self.tree.add_energy_j("intel-rapl:2", (sum(RAPL_W.values()) + PSYS_EXTRA_W) * dt_s)
        self.clock.advance(dt_s)

    def sampler(self, backend: Any, *, counter_interval_s: float = 0.0) -> Sampler:
        # Every device on every tick by default: these tests compare the devices over the same
        # ticks (tests/meters/test_counter_interval.py reads the RAPL zones less often).
        return Sampler(
            backend,
            run_id=RUN,
            interval_s=0.1,
            chunk_s=1.0,
            counter_interval_s=counter_interval_s,
            clock=self.clock,
            sleep=self.sleep,
            host=HOST,
        )


def _by_kind(summary: MeterSummary) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in summary.devices:
        out[d.kind] = out.get(d.kind, 0.0) + d.energy_j
    return out


# -- the composite ------------------------------------------------------------------------------


def test_auto_opens_every_domain_in_one_node_backend_gpus_first(tmp_path: Path) -> None:
    node = Node(tmp_path)
    backend, label = open_backend("auto", sources=node.sources)
    assert label == "nvml: 2 GPUs; rapl: 2 packages, 2 DRAM"
    assert isinstance(backend, NodeBackend)
    assert isinstance(backend, DeviceReader)
    assert [(d.backend, d.kind, d.uid) for d in backend.devices()] == [
        ("nvml", "gpu", node.nvml.uuids[0]),
        ("nvml", "gpu", node.nvml.uuids[1]),
        ("rapl", "cpu", "intel-rapl:0"),
        ("rapl", "dram", "intel-rapl:0:1"),
        ("rapl", "cpu", "intel-rapl:1"),
        ("rapl", "dram", "intel-rapl:1:1"),
    ]  # no psys, no core
    part, j = backend.part_of(3)
    assert isinstance(part, RaplBackend)
    assert j == 1
    backend.close()


def test_read_device_delegates_to_the_part_and_keeps_its_figures_and_times(tmp_path: Path) -> None:
    node = Node(tmp_path)
    nvml = NvmlBackend(nvml=node.nvml, clock=node.clock, env={})
    rapl = RaplBackend(node.tree.root, read_text=node.tree.read_text, clock=node.clock)
    node.tree.deny("intel-rapl:1:1")  # a root-only zone stays listed, denied, with its fix
    backend = NodeBackend([nvml, rapl], clock=node.clock)
    n = len(backend.devices())
    whole = backend.read()
    buffer = FlatBuffer(n, t_wall_s=node.clock.wall_s(), t_mono_s=node.clock.monotonic_s())
    for i in reversed(range(n)):  # any order, one device at a time
        backend.read_device(buffer, i)
    by_device = buffer.freeze()
    parts = (nvml.read(), rapl.read())
    expected = [(r, k) for r in parts for k in range(len(r))]
    for i, (readings, k) in enumerate(expected):
        for got in (whole, by_device):
            assert got.status_of(i) == readings.status_of(k)
            assert got.messages[i] == readings.messages[k]
            assert repr(got.energy_j[i]) == repr(readings.energy_j[k])
            assert repr(got.power_w[i]) == repr(readings.power_w[k])
            assert got.t_mono_s[i] == readings.t_mono_s[k]
    assert whole.status_of(5) == DeviceStatus.DENIED
    assert "chmod a+r" in whole.messages[5]


class _Closing(SimulatedBackend):
    def __init__(self, closed: list[str], name: str, fail: bool = False) -> None:
        super().__init__([SimulatedDevice(steady(100.0))])
        self.closed, self.name, self.fail = closed, name, fail

    def devices(self) -> tuple[DeviceInfo, ...]:
        return tuple(dataclasses.replace(d, uid=f"{self.name}-{d.uid}") for d in super().devices())

    def close(self) -> None:
        self.closed.append(self.name)
        if self.fail:
            raise OSError(f"{self.name} would not close")


def test_close_closes_every_part_once_even_when_one_fails() -> None:
    closed: list[str] = []
    backend = NodeBackend([_Closing(closed, "a", fail=True), _Closing(closed, "b")])
    with pytest.raises(OSError, match="a would not close"):
        backend.close()
    backend.close()
    assert closed == ["a", "b"]


def test_device_keys_stay_unique_and_every_part_reads_device_by_device() -> None:
    with pytest.raises(ValueError, match="share a uid"):
        NodeBackend([SimulatedBackend([SimulatedDevice(steady(1.0))])] * 2)

    class Whole:  # offers only read(): its devices could not be read one by one
        def devices(self) -> Sequence[DeviceInfo]:
            return ()

        def read(self) -> Readings:
            raise AssertionError

        def close(self) -> None:
            pass

    with pytest.raises(TypeError, match="read_device"):
        NodeBackend([Whole()])


# -- a whole-node run ---------------------------------------------------------------------------


def test_a_whole_node_run_gives_each_kind_the_fakes_exact_energy(tmp_path: Path) -> None:
    node = Node(tmp_path)
    backend, _ = open_backend("auto", sources=node.sources)
    sampler = node.sampler(backend)
    sampler.run_ticks(47)
    summary = sampler.stop()
    devices = {d.key.split("/", 1)[1]: d for d in summary.devices}
    for i, power_w in enumerate(GPU_W):
        d = devices[node.nvml.uuids[i]]
        assert d.method == "counter"
        assert d.energy_j == pytest.approx(power_w * d.duration_s, abs=NVML_MJ)
    for zone, power_w in RAPL_W.items():
        d = devices[zone]
        assert d.method == "counter"
        assert d.energy_j == pytest.approx(power_w * d.duration_s, rel=1e-9)
    span_s = summary.devices[0].duration_s
    assert span_s == pytest.approx(4.6)
    assert all(d.duration_s == pytest.approx(span_s) for d in summary.devices)
    kinds = _by_kind(summary)
    assert kinds["gpu"] == pytest.approx(sum(GPU_W) * span_s, abs=2 * NVML_MJ)
    assert kinds["cpu"] == pytest.approx((95.0 + 80.0) * span_s, rel=1e-9)
    assert kinds["dram"] == pytest.approx((12.5 + 10.0) * span_s, rel=1e-9)
    assert summary.energy_j == pytest.approx(sum(kinds.values()), rel=1e-12)
    assert summary.energy_low_j < summary.energy_j < summary.energy_high_j
    assert [p["kind"] for p in sampler.devices] == ["gpu", "gpu", "cpu", "dram", "cpu", "dram"]
    table = render_summary(
        summary,
        title="t",
        backend_label="nvml: 2 GPUs; rapl: 2 packages, 2 DRAM",
        simulated=False,
        upload=None,
        spool_dir="s",
    )
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    for name, kind in (("GPU", "gpu"), ("CPU", "cpu"), ("DRAM", "dram")):
        assert float(lines[name].split()[2]) == pytest.approx(kinds[kind], abs=0.01)
    assert float(lines["node"].split()[2]) == pytest.approx(summary.energy_j, abs=0.01)


def test_psys_is_not_double_counted(tmp_path: Path) -> None:
    """The platform zone contains the packages and DRAM: it is never a device, never summed."""
    node = Node(tmp_path, psys=True)
    backend, _ = open_backend("auto", sources=node.sources)
    assert all("psys" not in (d.name, d.uid) and d.uid != "intel-rapl:2" for d in backend.devices())
    sampler = node.sampler(backend)
    sampler.run_ticks(25)
    summary = sampler.stop()
    span_s = summary.devices[0].duration_s
    measured_rapl_j = sum(d.energy_j for d in summary.devices if d.kind in ("cpu", "dram"))
    assert measured_rapl_j == pytest.approx(sum(RAPL_W.values()) * span_s, rel=1e-9)
    assert summary.energy_j == pytest.approx(
        (sum(GPU_W) + sum(RAPL_W.values())) * span_s, abs=2 * NVML_MJ
    )  # not + psys (which alone would be packages + DRAM + 40 W again)


def test_root_only_rapl_stays_listed_beside_the_gpus_and_does_not_stop_them(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    for zone in RAPL_W:
        node.tree.deny(zone)
    backend, label = open_backend("auto", sources=node.sources)
    assert label == "nvml: 2 GPUs; rapl: 2 packages, 2 DRAM (unreadable: permission denied)"
    sampler = node.sampler(backend)
    sampler.run_ticks(15)
    summary = sampler.stop()
    gpus = [d for d in summary.devices if d.kind == "gpu"]
    assert all(d.energy_j > 0 for d in gpus)
    denied = [d for d in summary.devices if d.kind != "gpu"]
    assert len(denied) == 4
    assert all(d.status == "denied" and "chmod a+r" in d.message for d in denied)
    assert all(d.energy_j == 0 and d.samples == 0 for d in denied)  # no samples: nothing added
    assert summary.energy_j == pytest.approx(sum(d.energy_j for d in gpus))


def test_one_slow_gpu_holds_up_neither_the_others_nor_the_cpu_zones(tmp_path: Path) -> None:
    with _clock() as clock:
        fake = FakeNvml(
            [
                h100(profile=steady(300.0)),
                h100(profile=steady(250.0), slow_calls=(SlowCall(0.25, 0.95, 1.05),)),
            ],
            clock=clock,
        )
        tree = _tree(tmp_path / "powercap", psys=False)
        backend = NodeBackend(
            [
                NvmlBackend(nvml=fake, clock=clock, env={}),
                RaplBackend(tree.root, read_text=tree.read_text, clock=clock),
            ],
            clock=clock,
        )
        start_s = fake.loaded_mono_s
        sampler, _sink, summary = _run(backend, clock, seconds=2.95, sink=Sink())
    ticks = [round(k * INTERVAL_S, 6) for k in range(summary.ticks - 1)]  # then the closing edge
    first, slow, *zones = (
        _relative(_times(_sink, sampler, i), clock, start_s) for i in range(len(sampler.devices))
    )
    for times in (first, slow, *zones):  # the closing edge: read once stop() was called
        assert times[-1] >= 2.95 - 1e-6
    assert first[:-1] == ticks
    assert slow[:-1] == [t for t in ticks if t < 1.0] + [1.125] + [t for t in ticks if t >= 1.3]
    # The zones are read every 1 s (counter-only devices): tick 10's turn, after the slow GPU,
    # was cut short when tick 11 overtook it, so tick 11 takes it; then on the grid again.
    for times in zones:
        assert times[:-1] == [0.0, 1.1] + [t for t in ticks if t >= 2.0 and round(10 * t) % 10 == 0]
    assert [d.missed for d in summary.devices] == [{}, {"slow": 2}, {}, {}, {}, {}]


# -- overlapping domains ------------------------------------------------------------------------


class ModuleScope:
    """Simulated devices described as GH200-class modules (their figure includes the CPU)."""

    def __init__(self, inner: SimulatedBackend) -> None:
        self.inner = inner
        self._infos = tuple(
            dataclasses.replace(d, scope="module", uid=f"MOD-{d.index}") for d in inner.devices()
        )

    def devices(self) -> tuple[DeviceInfo, ...]:
        return self._infos

    def read(self) -> Readings:
        return self.inner.read()

    def read_device(self, buffer: FlatBuffer, i: int) -> None:
        self.inner.read_device(buffer, i)

    def close(self) -> None:
        self.inner.close()


def test_a_module_scope_device_covers_the_cpu_which_is_listed_but_not_added(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path, psys=False)
    module = ModuleScope(SimulatedBackend([SimulatedDevice(steady(900.0))], clock=node.clock))
    (info,) = module.devices()
    assert info.kind == "gpu"
    assert info.covers == ("cpu",)
    assert device_payload(info, host=HOST)["covers"] == ["cpu"]
    rapl = RaplBackend(node.tree.root, read_text=node.tree.read_text, clock=node.clock)
    backend = NodeBackend([module, rapl], clock=node.clock)
    sampler = node.sampler(backend)
    sampler.run_ticks(25)
    summary = sampler.stop()
    kinds = _by_kind(summary)
    span_s = summary.devices[0].duration_s
    assert kinds["gpu"] == pytest.approx(900.0 * span_s, rel=1e-9)
    assert kinds["cpu"] == pytest.approx(175.0 * span_s, rel=1e-9)  # still shown
    # the node adds the module (which holds the CPU) and the DRAM, never the CPU again
    assert summary.energy_j == pytest.approx((900.0 + 22.5) * span_s, rel=1e-9)
    table = render_summary(
        summary, title="t", backend_label="x", simulated=True, upload=None, spool_dir="s"
    )
    (cpu_line,) = [line for line in table.splitlines() if line.strip().startswith("CPU (2)")]
    assert "inside the GPU figure: not added" in cpu_line


def test_the_overlap_rule_is_per_host_and_never_excludes_the_declaring_device() -> None:
    hosts = ["a", "a", "a", "b", "b"]
    kinds = ["gpu", "cpu", "dram", "cpu", "gpu"]
    covers: list[Iterable[str]] = [("cpu",), (), (), (), ()]
    assert covered_by(hosts, kinds, covers) == [None, 0, None, None, None]
    assert covered_by(["a"], ["gpu"], [()]) == [None]
    with pytest.raises(ValueError, match="cover its own kind"):
        dataclasses.replace(module_info(), covers=("gpu",))


def module_info() -> DeviceInfo:
    (info,) = ModuleScope(SimulatedBackend([SimulatedDevice(steady(1.0))])).devices()
    return info


# -- what auto opens ----------------------------------------------------------------------------


def _sources(tmp_path: Path, *, gpus: int = 0, clock: ManualClock | None = None) -> Sources:
    clock = clock or ManualClock()
    (tmp_path / "powercap").mkdir(parents=True, exist_ok=True)
    (tmp_path / "hwmon").mkdir(parents=True, exist_ok=True)
    nvml = (
        FakeNvml([h100() for _ in range(gpus)], clock=clock)
        if gpus
        else FakeNvml([], init_error=codes.NVML_ERROR_DRIVER_NOT_LOADED)
    )
    return Sources(
        nvml=nvml,
        powercap=tmp_path / "powercap",
        hwmon=tmp_path / "hwmon",
        clock=clock,
        env={},
    )


def test_auto_reads_cpu_sockets_through_hwmon_where_there_is_no_rapl(tmp_path: Path) -> None:
    sources = _sources(tmp_path, gpus=1)
    hwmon = FakeHwmon(sources.hwmon)
    hwmon.add_amd_energy(sockets=2)
    backend, label = open_backend(
        "auto", sources=dataclasses.replace(sources, read_text=hwmon.read_text)
    )
    assert label == "nvml: 1 GPU; hwmon: 2 sockets (amd_energy)"
    assert [d.backend for d in backend.devices()] == ["nvml", "hwmon", "hwmon"]
    backend.close()


def test_auto_prefers_readable_hwmon_to_root_only_rapl_and_never_reads_both(
    tmp_path: Path,
) -> None:
    sources = _sources(tmp_path)
    rapl = _tree(sources.powercap, psys=False)
    for zone in RAPL_W:
        rapl.deny(zone)
    FakeHwmon(sources.hwmon).add_amd_energy(sockets=2)
    backend, label = open_backend(
        "auto", sources=dataclasses.replace(sources, read_text=rapl.read_text)
    )
    assert label == "hwmon: 2 sockets (amd_energy)"
    assert [d.backend for d in backend.devices()] == ["hwmon", "hwmon"]


def test_auto_with_everything_root_only_and_no_gpu_is_nothing_measurable(tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    rapl = _tree(sources.powercap, psys=False)
    hwmon = FakeHwmon(sources.hwmon)
    hwmon.add_amd_energy(sockets=1)
    for zone in RAPL_W:
        rapl.deny(zone)
    hwmon.deny(hwmon.socket_input(0))

    def read_text(path: Path) -> str:
        return hwmon.read_text(path) if path.is_relative_to(hwmon.root) else rapl.read_text(path)

    with pytest.raises(NothingMeasurable) as caught:
        open_backend("auto", sources=dataclasses.replace(sources, read_text=read_text))
    text = str(caught.value)
    assert "nvml: no NVIDIA GPU" in text
    assert "CVE-2020-8694" in text  # RAPL's fix
    assert "CVE-2020-12912" in text  # hwmon's fix
    assert "simulat" not in text.lower()


def test_auto_with_gpus_only_is_the_nvml_backend_itself(tmp_path: Path) -> None:
    backend, label = open_backend("auto", sources=_sources(tmp_path, gpus=2))
    assert label == "nvml: 2 GPUs"
    assert isinstance(backend, NvmlBackend)


def test_auto_opens_amd_gpus_beside_nvidia_ones(tmp_path: Path) -> None:
    sources = _sources(tmp_path, gpus=1)
    without = dataclasses.replace(sources, amdsmi=FakeAmdSmi([]))  # the library, no AMD GPU
    backend, label = open_backend("auto", sources=without)
    assert label.startswith("nvml: 1 GPU")
    assert "amdsmi" not in label
    backend.close()
    with_amd = dataclasses.replace(sources, amdsmi=FakeAmdSmi([mi300x(), mi300x()]))
    backend, label = open_backend("auto", sources=with_amd)
    assert label.startswith("nvml: 1 GPU; amdsmi: 2 GPUs")
    assert [d.backend for d in backend.devices()][:3] == ["nvml", "amdsmi", "amdsmi"]
    backend.close()


def test_auto_estimates_only_where_nothing_is_measurable(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 80 0 0 0 0 0 0\n")
    sources = dataclasses.replace(_sources(tmp_path, gpus=1), proc_stat=stat)
    backend, label = open_backend("auto", cpu_tdp_w=150.0, sources=sources)
    assert label == "nvml: 1 GPU"  # a GPU is measurable: no estimate beside it
    nothing = dataclasses.replace(_sources(tmp_path / "bare"), proc_stat=stat)
    backend, label = open_backend("auto", cpu_tdp_w=150.0, sources=nothing)
    assert label == "estimate: CPU utilisation × 150 W TDP (not a measurement)"
    (info,) = backend.devices()
    assert (info.kind, info.power_method.label, info.simulated) == ("cpu", "estimate", False)
    unreadable = dataclasses.replace(nothing, proc_stat=tmp_path / "no-such-stat")
    with pytest.raises(NothingMeasurable, match="estimate: "):
        open_backend("auto", cpu_tdp_w=150.0, sources=unreadable)
