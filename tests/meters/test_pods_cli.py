"""``thermoledger sidecar --attribute-pods`` and ``thermoledger pod-resources-relay``: the wiring.

The attribution itself is tested in-process (``test_pods.py``); here the command line: bad
combinations exit 2 before anything runs, and both long-running commands stop cleanly on
SIGTERM with exit status 0, as the DaemonSet's containers must.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.meters.fake_kubelet import FakeKubelet, gpu_pod, short_dir
from thermoledger.meters import cli
from thermoledger.meters.k8s import PodResourcesClient

pytestmark = pytest.mark.slow  # subprocesses, live servers or real time

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield path


def run_main(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    code = cli.main(list(argv), env={}, out=io.StringIO(), err=err)
    return code, err.getvalue()


def spawn(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "thermoledger.meters.cli", *argv],
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> None:
    """Kill it if a failed assertion left it running; close its pipes."""
    if process.poll() is None:
        process.kill()
    process.communicate()


def wait_for(process: subprocess.Popen[str], *texts: str) -> str:
    """Read stderr until a line holds one of ``texts``; returns that line."""
    assert process.stderr is not None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line, f"stderr ended before any of {texts!r} (exit {process.poll()})"
        if any(text in line for text in texts):
            return line
    raise AssertionError(f"none of {texts!r} within {WAIT_S} s")


def test_pod_attribution_refuses_simulated_devices_and_a_gpu_selection(tmp_path: Path) -> None:
    spool = str(tmp_path)
    code, err = run_main("sidecar", "--attribute-pods", "--simulate", "--spool-dir", spool)
    assert code == 2
    assert "nvml backend, not simulated" in err
    code, err = run_main("sidecar", "--attribute-pods", "--gpus", "0", "--spool-dir", spool)
    assert code == 2
    assert "leave --gpus" in err
    code, err = run_main("sidecar", "--attribute-pods", "--pod-poll", "0", "--spool-dir", spool)
    assert code == 2
    assert "poll_s" in err


def test_the_relay_mode_must_be_octal() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["pod-resources-relay", "--listen", "/run/x.sock", "--mode", "0640"])
    assert args.mode == 0o640
    assert args.socket == "/var/lib/kubelet/pod-resources/kubelet.sock"
    with pytest.raises(SystemExit):
        parser.parse_args(["pod-resources-relay", "--listen", "/x", "--mode", "rw"])


def test_the_relay_command_serves_until_sigterm(sockets: Path) -> None:
    kubelet = FakeKubelet(sockets / "kubelet.sock", pods=[gpu_pod("ml", "a", "GPU-1")]).start()
    listen = sockets / "relay.sock"
    relay = spawn(
        "pod-resources-relay", "--socket", str(kubelet.socket_path), "--listen", str(listen), "-v"
    )
    try:
        wait_for(relay, "relaying")
        with PodResourcesClient(listen, timeout_s=10.0) as client:
            assert client.list_devices()[0].device_id == "GPU-1"
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(WAIT_S) == 0
        assert not listen.exists()
    finally:
        finish(relay)
        kubelet.stop()


def test_the_node_meter_stops_cleanly_on_sigterm(tmp_path: Path, sockets: Path) -> None:
    """Whatever NVML finds here (no driver: attribution disabled; a GPU machine: the empty
    selection of CUDA_VISIBLE_DEVICES), the node meter waits for SIGTERM and exits 0."""
    kubelet = FakeKubelet(sockets / "kubelet.sock", pods=[gpu_pod("ml", "a", "GPU-1")]).start()
    meter = spawn(
        "sidecar",
        "--attribute-pods",
        "--pod-resources-socket",
        str(kubelet.socket_path),
        "--node",
        "gpu-node-7",
        "--run-id",
        "k8s-node:gpu-node-7:test",
        "--spool-dir",
        str(tmp_path / "spool"),
        "--pod-poll",
        "0.2",
        "-v",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        line = wait_for(meter, "pod attribution disabled", "asking the kubelet every 0.2 s")
        meter.send_signal(signal.SIGTERM)
        assert meter.wait(WAIT_S) == 0
        assert meter.stderr is not None
        rest = meter.stderr.read()
        if "asking the kubelet" in line:
            assert "node gpu-node-7: pod attribution stopped by SIGTERM" in rest
            assert kubelet.calls >= 1
    finally:
        finish(meter)
        kubelet.stop()
