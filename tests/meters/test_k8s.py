"""The PodResources client and relay against a real gRPC server on a unix socket.

The fake kubelet (`tests.meters.fake_kubelet`) encodes its answers by hand from the upstream
field numbers, so these tests check the client's message layout, not only that it agrees with
itself.
"""

from __future__ import annotations

import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.meters.fake_kubelet import FakeKubelet, Pod, encode_pods, gpu_pod, short_dir
from thermoledger.meters import k8s
from thermoledger.meters.errors import MeterError
from thermoledger.meters.k8s import (
    ContainerDevices,
    ContainerResources,
    DeviceAllocation,
    PodResources,
    PodResourcesClient,
    PodResourcesError,
    PodResourcesRelay,
    PodResourcesUnavailable,
)

GPU = [f"GPU-{i:08x}-1111-2222-3333-444455556666" for i in range(4)]


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield path


@pytest.fixture
def kubelet(sockets: Path) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(sockets / "kubelet.sock").start()
    yield fake
    fake.stop()


TRAINER = Pod(
    "ml",
    "trainer-0",
    [
        (
            "train",
            [("nvidia.com/gpu", [GPU[1], GPU[0]]), ("example.com/fpga", ["fpga-7"])],
        ),
        ("logger", []),
        ("sidecar", [("nvidia.com/gpu", [GPU[2]])]),
    ],
)


def test_list_reads_the_kubelets_answer_field_by_field(kubelet: FakeKubelet) -> None:
    kubelet.pods = [TRAINER, Pod("kube-system", "dns"), gpu_pod("serve", "api", "MIG-abc")]
    with PodResourcesClient(kubelet.socket_path, timeout_s=10.0) as client:
        pods = client.list_pods()
        rows = client.list_devices()
    assert pods[0] == PodResources(
        "ml",
        "trainer-0",
        (
            ContainerResources(
                "train",
                (
                    ContainerDevices("nvidia.com/gpu", (GPU[1], GPU[0])),
                    ContainerDevices("example.com/fpga", ("fpga-7",)),
                ),
            ),
            ContainerResources("logger", ()),
            ContainerResources("sidecar", (ContainerDevices("nvidia.com/gpu", (GPU[2],)),)),
        ),
    )
    assert pods[1] == PodResources("kube-system", "dns", ())
    # Only NVIDIA's resources, one row per device, sorted.
    assert rows == (
        DeviceAllocation("ml", "trainer-0", "sidecar", "nvidia.com/gpu", GPU[2]),
        DeviceAllocation("ml", "trainer-0", "train", "nvidia.com/gpu", GPU[0]),
        DeviceAllocation("ml", "trainer-0", "train", "nvidia.com/gpu", GPU[1]),
        DeviceAllocation("serve", "api", "main", "nvidia.com/gpu", "MIG-abc"),
    )
    assert kubelet.calls == 2  # one channel, two calls


def test_the_encoder_writes_what_the_kubelet_writes() -> None:
    pods = [gpu_pod("ml", "a", GPU[0], GPU[1]), Pod("ml", "b", [("c", [])])]
    typed = k8s.decode_list_response(encode_pods(pods))
    assert k8s.decode_list_response(k8s.encode_list_response(typed)) == typed
    assert typed[0].containers[0].devices[0].device_ids == (GPU[0], GPU[1])


def test_list_pod_gpus_asks_once(kubelet: FakeKubelet) -> None:
    kubelet.pods = [gpu_pod("ml", "a", GPU[3])]
    assert k8s.list_pod_gpus(kubelet.socket_path, 10.0) == (
        DeviceAllocation("ml", "a", "main", "nvidia.com/gpu", GPU[3]),
    )


def test_a_missing_socket_says_what_to_mount(sockets: Path) -> None:
    path = sockets / "pod-resources" / "kubelet.sock"
    with pytest.raises(PodResourcesUnavailable, match="does not exist") as caught:
        k8s.list_pod_gpus(path, 1.0)
    assert str(path) in str(caught.value)
    assert "hostPath" in str(caught.value)
    assert isinstance(caught.value, MeterError)


def test_a_file_that_is_not_a_socket_is_refused(sockets: Path) -> None:
    path = sockets / "kubelet.sock"
    path.write_text("not a socket")
    with pytest.raises(PodResourcesUnavailable, match="not a unix socket"):
        k8s.list_pod_gpus(path, 1.0)


def test_a_socket_nobody_listens_on_is_unreachable(sockets: Path) -> None:
    path = sockets / "kubelet.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # the file stays; nobody accepts on it
    stale.close()
    with pytest.raises(PodResourcesUnavailable, match="cannot reach"):
        k8s.list_pod_gpus(path, 5.0)


def test_a_kubelet_without_the_v1_api_is_named(kubelet: FakeKubelet) -> None:
    kubelet.error = (grpc.StatusCode.UNIMPLEMENTED, "unknown service v1.PodResourcesLister")
    with pytest.raises(PodResourcesError, match=r"Kubernetes 1\.20"):
        k8s.list_pod_gpus(kubelet.socket_path, 10.0)
    kubelet.error = (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited")
    with pytest.raises(PodResourcesError, match="RESOURCE_EXHAUSTED: rate limited") as caught:
        k8s.list_pod_gpus(kubelet.socket_path, 10.0)
    assert not isinstance(caught.value, PodResourcesUnavailable)


def test_no_answer_in_time_is_unavailable(kubelet: FakeKubelet) -> None:
    kubelet.hang.set()  # the handler waits until the fixture releases it
    with pytest.raises(PodResourcesUnavailable, match=r"no answer within 0\.2 s"):
        k8s.list_pod_gpus(kubelet.socket_path, 0.2)


def test_the_client_reaches_a_restarted_kubelet_at_once(sockets: Path) -> None:
    path = sockets / "kubelet.sock"
    first = FakeKubelet(path, pods=[gpu_pod("ml", "a", GPU[0])]).start()
    client = PodResourcesClient(path, timeout_s=10.0)
    try:
        assert len(client.list_devices()) == 1
        first.stop()
        with pytest.raises(PodResourcesUnavailable):
            client.list_devices()
        second = FakeKubelet(path, pods=[gpu_pod("ml", "b", GPU[1])]).start()
        try:
            # The failed call dropped the channel: no reconnect backoff stands in the way.
            assert client.list_devices()[0].pod == "b"
        finally:
            second.stop()
    finally:
        client.close()


def test_the_relay_offers_the_kubelet_on_a_group_socket(
    kubelet: FakeKubelet, sockets: Path
) -> None:
    kubelet.pods = [TRAINER]
    listen = sockets / "relay.sock"
    with PodResourcesRelay(kubelet.socket_path, listen).start() as relay:
        assert stat.S_ISSOCK(listen.stat().st_mode)
        assert stat.S_IMODE(listen.stat().st_mode) == 0o660
        with PodResourcesClient(listen, timeout_s=10.0) as client:
            assert client.list_pods() == PodResourcesClient(kubelet.socket_path).list_pods()
            assert len(client.list_devices()) == 3
        assert relay.connections >= 1
    assert not listen.exists()  # removed on close


def test_the_relay_closes_a_connection_it_cannot_forward(
    sockets: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listen = sockets / "relay.sock"
    log = logging.getLogger("test.relay")
    with (
        PodResourcesRelay(sockets / "absent.sock", listen, logger=log).start(),
        PodResourcesClient(listen, timeout_s=10.0) as client,
    ):
        for _ in range(3):
            with pytest.raises(PodResourcesUnavailable):
                client.list_pods()
    warnings = [
        r for r in caplog.records if r.name == "test.relay" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1  # logged once, not per connection
    assert "absent.sock" in warnings[0].getMessage()


def test_the_relay_replaces_a_stale_socket_but_not_a_file(sockets: Path) -> None:
    listen = sockets / "relay.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(listen))
    stale.close()
    PodResourcesRelay(sockets / "kubelet.sock", listen).start().close()
    listen.write_text("a file")
    with pytest.raises(PodResourcesUnavailable, match="cannot listen"):
        PodResourcesRelay(sockets / "kubelet.sock", listen).start()
    assert listen.read_text() == "a file"
