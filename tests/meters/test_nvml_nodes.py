"""Which GPUs a node meter meters, and what their figures cover (issue 16, items 2, 3 and 5).

- several local ranks, each given its own ``CUDA_VISIBLE_DEVICES``: the node meter (local rank
  0) meters every GPU it can open; Slurm's ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` (ranges
  too) name the job's GPUs by minor number; an explicit ``gpus`` always wins;
- integer ``CUDA_VISIBLE_DEVICES`` entries are CUDA ordinals: libcuda's order where it may be
  asked, else the PCI bus order under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, else NVML's, with a loud
  warning on a node of mixed models;
- a GH200 (C2C superchip) is metered at module scope, and a node total with a RAPL CPU beside
  it does not count the CPU twice.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.meters.test_node import RAPL_W, Node, _by_kind
from thermoledger.meters.backends import DeviceStatus, Method, NvmlBackend
from thermoledger.meters.backends import nvml_api as codes
from thermoledger.meters.backends.cuda_ordinals import (
    CudaUnavailable,
    format_uuid,
    libcuda_uuids,
    libcuda_uuids_isolated,
)
from thermoledger.meters.backends.node import NodeBackend
from thermoledger.meters.backends.nvml_selection import parse_gpu_ids
from thermoledger.meters.backends.rapl import RaplBackend
from thermoledger.meters.backends.simulated import steady
from thermoledger.meters.errors import DeviceUnavailable
from thermoledger.meters.runid import elect
from thermoledger.meters.summary import render_summary
from thermoledger.meters.testing import ManualClock
from thermoledger.meters.testing.fake_pynvml import (
    FakeGpu,
    FakeNvml,
    Fault,
    a100,
    default_uuid,
    gh200,
    h100,
)

NO_PERMISSION = codes.NVML_ERROR_NO_PERMISSION


def _open(
    fleet: Sequence[FakeGpu], env: dict[str, str], **kwargs: Any
) -> tuple[NvmlBackend, FakeNvml]:
    clock = ManualClock()
    fake = FakeNvml(fleet, clock=clock)
    return NvmlBackend(nvml=fake, clock=clock, env=env, **kwargs), fake


def _indices(backend: NvmlBackend) -> list[int]:
    return [d.index for d in backend.devices()]


# -- item 2: several local ranks, Slurm's GPUs ----------------------------------------------------


@pytest.mark.parametrize(
    ("rank_vars", "size_vars"),
    [
        ({"LOCAL_RANK": "{r}"}, {"LOCAL_WORLD_SIZE": "4"}),
        ({"SLURM_LOCALID": "{r}"}, {"SLURM_NTASKS_PER_NODE": "4"}),
        # without --ntasks-per-node Slurm still says it, per node: 4 tasks on node 1 here
        ({"SLURM_LOCALID": "{r}"}, {"SLURM_TASKS_PER_NODE": "2,4(x2),1", "SLURM_NODEID": "1"}),
        ({"OMPI_COMM_WORLD_LOCAL_RANK": "{r}"}, {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}),
    ],
)
def test_several_local_ranks_each_with_its_own_gpu_the_node_meter_meters_them_all(
    rank_vars: dict[str, str], size_vars: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    fleet = [h100() for _ in range(4)]
    envs = [
        {**{k: v.format(r=r) for k, v in rank_vars.items()}, **size_vars}
        | {"CUDA_VISIBLE_DEVICES": str(r)}
        for r in range(4)
    ]
    # one meter per node: only local rank 0 samples, and it must cover every rank's GPU
    assert [elect(env, host="n").sample for env in envs] == [True, False, False, False]
    with caplog.at_level(logging.INFO):
        backend, _ = _open(fleet, envs[0])
    assert _indices(backend) == [0, 1, 2, 3]
    assert backend.selection.source == "local_ranks"
    assert "names 1 of the 4 GPUs" in backend.selection.rule
    assert "local rank 0" in caplog.text
    assert "metering GPU(s) [0, 1, 2, 3]" in caplog.text
    assert all("(local_ranks)" in d.note for d in backend.devices())
    backend.close()
    # any rank that opens a backend sees the same GPUs, its own first
    backend, _ = _open(fleet, envs[2])
    assert _indices(backend) == [2, 0, 1, 3]
    backend.close()


def test_one_local_rank_or_no_rank_keeps_cuda_visible_devices() -> None:
    fleet = [h100() for _ in range(4)]
    for env in (
        {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "CUDA_VISIBLE_DEVICES": "1"},
        {"LOCAL_WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "1"},  # no local rank: not a rank
        {"CUDA_VISIBLE_DEVICES": "1"},
    ):
        backend, _ = _open(fleet, env)
        assert _indices(backend) == [1], env
        assert backend.selection.source == "CUDA_VISIBLE_DEVICES"
        backend.close()


def test_under_a_per_task_device_cgroup_the_node_meter_meters_what_it_can_open() -> None:
    refused = Fault(NO_PERMISSION, call="nvmlDeviceGetHandleByIndex")
    fleet = [h100(), h100(faults=(refused,)), h100(faults=(refused,))]
    env = {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3", "CUDA_VISIBLE_DEVICES": "0"}
    backend, _ = _open(fleet, env)
    assert _indices(backend) == [0]  # all it can open is its own: nothing to widen
    assert backend.selection.source == "CUDA_VISIBLE_DEVICES"
    assert len(backend.selection.unopened) == 2


def test_parse_gpu_ids_reads_slurm_lists_with_ranges() -> None:
    assert parse_gpu_ids("0-3,5") == [0, 1, 2, 3, 5]
    assert parse_gpu_ids(" 7 , 2-3,3") == [7, 2, 3]
    for bad in ("", "a", "3-1", "0,,1", "1-"):
        with pytest.raises(ValueError, match=r"neither a GPU id nor a range|runs backwards"):
            parse_gpu_ids(bad)


def _minor_fleet() -> list[FakeGpu]:
    """Six GPUs whose minor numbers are not their NVML indices: minors 4, 5, 0, 1, 2, 3."""
    return [h100(minor_number=m) for m in (4, 5, 0, 1, 2, 3)]


def test_slurm_step_gpus_with_ranges_name_the_jobs_gpus_by_minor_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "SLURM_STEP_GPUS": "0-2,5",
        "SLURM_JOB_GPUS": "0-5",  # the step's GPUs come first: another step has the rest
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS_PER_NODE": "4",
        "CUDA_VISIBLE_DEVICES": "0",  # rank 0's own GPU only: Slurm's list wins
    }
    with caplog.at_level(logging.INFO):
        backend, _ = _open(_minor_fleet(), env)
    assert _indices(backend) == [2, 3, 4, 1]  # minors 0, 1, 2 and 5
    assert backend.selection.source == "SLURM_STEP_GPUS"
    assert "by minor number" in backend.selection.rule
    assert "SLURM_STEP_GPUS=0-2,5" in caplog.text
    backend.close()
    backend, _ = _open(_minor_fleet(), {"SLURM_JOB_GPUS": "3,4"})
    assert _indices(backend) == [5, 0]
    assert backend.selection.source == "SLURM_JOB_GPUS"


def test_an_explicit_selection_wins_over_slurm_and_local_ranks() -> None:
    env = {"SLURM_STEP_GPUS": "0-5", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "6"}
    backend, _ = _open(_minor_fleet(), env, gpus=[1])
    assert _indices(backend) == [1]
    assert backend.selection.source == "gpus"


def test_a_slurm_gpu_this_process_may_not_open_is_named_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = Fault(NO_PERMISSION, call="nvmlDeviceGetHandleByIndex")
    fleet = [h100(), h100(faults=(refused,)), h100()]
    with caplog.at_level(logging.WARNING):
        backend, _ = _open(fleet, {"SLURM_STEP_GPUS": "0-2"})
    assert _indices(backend) == [0, 2]
    (missing,) = backend.selection.ignored
    assert missing.startswith("SLURM_STEP_GPUS GPU 1:")
    assert "thermoledger run" in missing
    assert "not metered: SLURM_STEP_GPUS GPU 1" in caplog.text


def test_unusable_slurm_lists_fall_through_to_the_next_rule_and_say_so() -> None:
    env = {"SLURM_STEP_GPUS": "N/A", "SLURM_JOB_GPUS": "9", "CUDA_VISIBLE_DEVICES": "1"}
    backend, _ = _open([h100(), h100()], env)
    assert _indices(backend) == [1]
    assert backend.selection.source == "CUDA_VISIBLE_DEVICES"
    step, job = backend.selection.ignored
    assert "SLURM_STEP_GPUS='N/A': not a list of GPU ids" in step
    assert "SLURM_JOB_GPUS=9: no GPU this process can open has minor number(s) 9" in job


# -- item 3: integer CUDA_VISIBLE_DEVICES entries are CUDA ordinals -------------------------------


def _mixed_fleet() -> list[FakeGpu]:
    """NVML order A100 (bus 0x41), H100 (bus 0x01), A100 (bus 0x81): CUDA's fastest-first puts
    the H100 first; the PCI bus order puts it first too, then the A100s by bus."""
    return [a100(pci_bus=0x41), h100(pci_bus=0x01), a100(pci_bus=0x81)]


def test_mixed_models_without_libcuda_or_pci_order_keep_nvml_order_and_warn_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        backend, _ = _open(_mixed_fleet(), {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert _indices(backend) == [0, 1]
    (warning,) = backend.selection.warnings
    assert "mixed GPU models" in warning
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in warning
    assert caplog.text.count("mixed GPU models") == 1  # once, however many entries
    assert all("may not be the GPU CUDA calls by that number" in d.note for d in backend.devices())
    assert "may not be CUDA's" in backend.selection.ordinals


@pytest.mark.parametrize(("visible", "indices"), [("0", [1]), ("1,2", [0, 2]), ("2,0", [2, 1])])
def test_with_pci_bus_id_order_ordinals_follow_the_pci_bus(
    visible: str, indices: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    env = {"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    with caplog.at_level(logging.WARNING):
        backend, _ = _open(_mixed_fleet(), env)
    assert _indices(backend) == indices
    assert backend.selection.ordinals == "by PCI bus id (CUDA_DEVICE_ORDER=PCI_BUS_ID)"
    assert not backend.selection.warnings
    assert "mixed" not in caplog.text


def test_identical_models_keep_nvml_order_without_a_warning() -> None:
    backend, _ = _open([h100(pci_bus=0x41), h100(pci_bus=0x01)], {"CUDA_VISIBLE_DEVICES": "1"})
    assert _indices(backend) == [1]
    assert not backend.selection.warnings
    assert "identical GPU models" in backend.selection.ordinals


class FakeCuda:
    """What libcuda says CUDA's devices are, counted (a stand-in for `libcuda_uuids`)."""

    def __init__(self, uuids: Sequence[str] | None = None, error: str = "") -> None:
        self.uuids, self.error, self.asked = list(uuids or []), error, 0

    def __call__(self) -> list[str]:
        self.asked += 1
        if self.error:
            raise CudaUnavailable(self.error)
        return self.uuids


def _cuda_env(monkeypatch: pytest.MonkeyPatch, visible: str) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` set in the process too: libcuda would read the same."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return {"CUDA_VISIBLE_DEVICES": visible}


def test_libcuda_says_which_gpu_each_ordinal_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA enumerates the visible devices fastest first: the H100 (NVML 1), then NVML 0
    cuda = FakeCuda([default_uuid(1), default_uuid(0)])
    backend, _ = _open(_mixed_fleet(), _cuda_env(monkeypatch, "0,1"), cuda_uuids=cuda)
    assert _indices(backend) == [1, 0]
    assert backend.selection.ordinals == "by libcuda (CUDA's own order)"
    assert not backend.selection.warnings
    assert cuda.asked == 1


def test_libcuda_is_not_asked_for_another_environment_or_without_integer_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = FakeCuda([default_uuid(1)])
    _cuda_env(monkeypatch, "2")  # this process's CUDA would see another list
    backend, _ = _open(_mixed_fleet(), {"CUDA_VISIBLE_DEVICES": "0"}, cuda_uuids=cuda)
    assert _indices(backend) == [0]
    uuid_env = _cuda_env(monkeypatch, default_uuid(2))
    backend, _ = _open(_mixed_fleet(), uuid_env, cuda_uuids=cuda)
    assert _indices(backend) == [2]
    assert cuda.asked == 0


@pytest.mark.parametrize(
    "cuda",
    [FakeCuda(error="no libcuda.so.1"), FakeCuda(["GPU-00000000-0000-0000-0000-000000000000"])],
    ids=["libcuda-fails", "libcuda-names-another-gpu"],
)
def test_when_libcuda_cannot_tell_the_other_rules_follow(
    cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _cuda_env(monkeypatch, "0")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    backend, _ = _open(_mixed_fleet(), env, cuda_uuids=cuda)
    assert _indices(backend) == [1]  # by PCI bus
    assert backend.selection.ordinals.startswith("by PCI bus id")
    assert "libcuda" in backend.selection.ordinals  # why libcuda did not decide
    assert cuda.asked == 1


class _FakeLibcuda:
    """libcuda's functions as ctypes calls them: results through ``byref`` arguments."""

    def __init__(self, raw: list[bytes], *, v2: bool = True, fail: str = "") -> None:
        self.raw, self.fail = raw, fail
        if v2:
            self.cuDeviceGetUuid_v2 = self._uuid
        self.cuDeviceGetUuid = self._uuid

    def cuInit(self, flags: int) -> int:  # noqa: N802
        return 100 if self.fail == "init" else 0  # CUDA_ERROR_NO_DEVICE

    def cuDeviceGetCount(self, count: Any) -> int:  # noqa: N802
        count._obj.value = len(self.raw)
        return 0

    def cuDeviceGet(self, device: Any, ordinal: int) -> int:  # noqa: N802
        device._obj.value = 10 + ordinal
        return 0

    def _uuid(self, uuid: Any, device: ctypes.c_int) -> int:
        ctypes.memmove(ctypes.addressof(uuid._obj), self.raw[device.value - 10], 16)
        return 0


def test_libcuda_uuids_reads_cudas_order_through_ctypes() -> None:
    raw = [bytes(range(16)), b"\x00" * 15 + b"\xff"]
    lib = _FakeLibcuda(raw)
    assert libcuda_uuids(lambda name: lib) == [
        "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f",
        "GPU-00000000-0000-0000-0000-0000000000ff",
    ]
    old = _FakeLibcuda(raw, v2=False)  # a driver before cuDeviceGetUuid_v2
    assert libcuda_uuids(lambda name: old)[0] == format_uuid(raw[0])


def test_libcuda_failures_are_one_exception_never_a_crash() -> None:
    def missing(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    with pytest.raises(CudaUnavailable, match="no libcuda"):
        libcuda_uuids(missing)
    with pytest.raises(CudaUnavailable, match="cuInit returned CUDA error 100"):
        libcuda_uuids(lambda name: _FakeLibcuda([], fail="init"))
    with pytest.raises(CudaUnavailable, match="AttributeError"):
        libcuda_uuids(lambda name: object())
    # the isolated child either answers (a host with CUDA) or says why not, never more
    try:
        uuids = libcuda_uuids_isolated()
    except CudaUnavailable:
        return
    assert all(u.startswith("GPU-") for u in uuids)


# -- item 5: Grace Hopper and other C2C superchips ---------------------------------------------


def test_a_gh200_is_metered_at_module_scope() -> None:
    backend, fake = _open([gh200(profile=steady(650.0))], {})
    (info,) = backend.devices()
    assert info.scope == "module"
    assert info.kind == "gpu"
    assert info.covers == ("cpu",)
    assert "C2C superchip (nvmlDeviceGetC2cModeInfoV: C2C on)" in info.note
    assert "module power (CPU, GPU and their memory)" in info.uncertainty.note
    assert info.power_method == Method.POWER_AVG
    assert "at module scope" in info.uncertainty.note
    assert backend.energy_in_field == (True,)  # module power and the counter in one call
    fake.clock.advance(2.0)  # type: ignore[attr-defined]
    readings = backend.read()
    assert readings.status.tolist() == [DeviceStatus.OK]
    assert readings.power_w.tolist() == [pytest.approx(650.0)]
    assert readings.energy_j.tolist() == [pytest.approx(1300.0, abs=1e-3)]


@pytest.mark.parametrize("how", ["driver-lacks-c2c-query", "binding-lacks-c2c-query"])
def test_without_the_c2c_query_module_scope_is_found_by_the_field_probe(how: str) -> None:
    clock = ManualClock()
    if how == "driver-lacks-c2c-query":
        fake = FakeNvml([gh200(c2c_query=False)], clock=clock)
    else:
        fake = OldBinding([gh200()], clock=clock)
    backend = NvmlBackend(nvml=fake, clock=clock, env={})
    (info,) = backend.devices()
    assert info.scope == "module"
    assert "its power fields answer at module scope only" in info.note
    clock.advance(1.5)
    assert backend.read().power_w.tolist() == [pytest.approx(300.0)]


class OldBinding(FakeNvml):
    """A ``pynvml`` from before ``nvmlDeviceGetC2cModeInfoV``."""

    nvmlDeviceGetC2cModeInfoV = None  # type: ignore[assignment]  # noqa: N815


def test_an_h100_stays_gpu_scope_and_is_not_probed_at_module_scope() -> None:
    backend, fake = _open([h100()], {})
    (info,) = backend.devices()
    assert info.scope == "gpu"
    assert info.covers == ()
    assert "C2C" not in info.note
    assert fake.calls[("nvmlDeviceGetC2cModeInfoV", 0)] == 1
    # the power-field probe and the energy-field check: no module-scope probe
    assert fake.calls[("nvmlDeviceGetFieldValues", 0)] == 2


def test_a_gh200_node_with_a_rapl_cpu_does_not_add_the_cpu_twice(tmp_path: Path) -> None:
    node = Node(tmp_path, psys=False)  # its RAPL packages and DRAM, drawing RAPL_W
    module_w = 700.0
    fake = FakeNvml([gh200(profile=steady(module_w))], clock=node.clock)
    gpu = NvmlBackend(nvml=fake, clock=node.clock, env={})
    rapl = RaplBackend(node.tree.root, read_text=node.tree.read_text, clock=node.clock)
    sampler = node.sampler(NodeBackend([gpu, rapl], clock=node.clock))
    sampler.run_ticks(25)
    summary = sampler.stop()
    kinds = _by_kind(summary)
    span_s = summary.devices[0].duration_s
    packages_w = RAPL_W["intel-rapl:0"] + RAPL_W["intel-rapl:1"]
    dram_w = RAPL_W["intel-rapl:0:1"] + RAPL_W["intel-rapl:1:1"]
    assert kinds["gpu"] == pytest.approx(module_w * span_s, rel=1e-3)
    assert kinds["cpu"] == pytest.approx(packages_w * span_s, rel=1e-3)  # shown
    # the node adds the module (which holds the Grace CPU) and DRAM, never the CPU again
    assert summary.energy_j == pytest.approx((module_w + dram_w) * span_s, rel=1e-3)
    table = render_summary(
        summary, title="t", backend_label="x", simulated=False, upload=None, spool_dir="s"
    )
    (cpu_line,) = [line for line in table.splitlines() if line.strip().startswith("CPU (2)")]
    assert "inside the GPU figure: not added" in cpu_line


def test_unknown_explicit_selection_still_raises() -> None:
    with pytest.raises(DeviceUnavailable):
        _open([h100()], {"SLURM_STEP_GPUS": "0"}, gpus=[3])
