"""A fake kubelet: a real gRPC server serving ``v1.PodResourcesLister/List`` on a unix socket.

Its answers are encoded here by hand, field number by field number as in the upstream
``api.proto`` (``staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``), not with
`meters.k8s`'s message classes, so a wrong field number in the client cannot be hidden by the
same mistake in the fake. Each container also carries fields the client does not declare
(topology, cpu ids, memory), which it must skip.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

# (container name, [(resource name, [device ids])])
Container = tuple[str, Sequence[tuple[str, Sequence[str]]]]


@dataclass(frozen=True)
class Pod:
    """A pod as the fake lists it."""

    namespace: str
    name: str
    containers: Sequence[Container] = ()


def gpu_pod(namespace: str, name: str, *gpus: str, container: str = "main") -> Pod:
    """A pod with one container holding ``gpus`` as ``nvidia.com/gpu``."""
    return Pod(namespace, name, [(container, [("nvidia.com/gpu", list(gpus))])])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def encode_pods(pods: Sequence[Pod]) -> bytes:
    """``ListPodResourcesResponse`` bytes, by hand (see the module docstring)."""
    out = b""
    for pod in pods:
        body = _text(1, pod.name) + _text(2, pod.namespace)
        for name, resources in pod.containers:
            container = _text(1, name)
            for resource, ids in resources:
                numa = _field(1, _varint(1 << 3 | 0) + _varint(1))  # NUMANode{ID = 1}
                devices = _text(1, resource) + b"".join(_text(2, i) for i in ids)
                devices += _field(3, numa)  # TopologyInfo{nodes = [NUMANode]}
                container += _field(2, devices)
            container += _field(3, _varint(0) + _varint(3))  # cpu_ids = [0, 3], packed
            container += _field(4, _text(1, "memory") + _varint(2 << 3) + _varint(1 << 20))
            body += _field(3, container)
        out += _field(1, body)
    return out


@dataclass
class FakeKubelet:
    """Serves `pods` on ``socket_path``; `error` makes ``List`` fail with that status.

    Attributes:
        pods: What ``List`` answers.
        error: A gRPC status code (and details) to answer instead.
        hang: While set, ``List`` waits (for the client's deadline) until it is cleared.
        calls: How many ``List`` calls arrived.
    """

    socket_path: Path
    pods: list[Pod] = field(default_factory=list)
    error: tuple[grpc.StatusCode, str] | None = None
    hang: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    calls: int = 0
    _server: Any = None

    def _list(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        assert request == b"", "ListPodResourcesRequest has no field"
        if self.hang.is_set():
            self.release.wait(30.0)
        if self.error is not None:
            context.abort(*self.error)
        return encode_pods(self.pods)

    def start(self) -> FakeKubelet:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    self._list, request_deserializer=None, response_serializer=None
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(10.0)
            self._server = None
        self.socket_path.unlink(missing_ok=True)


@contextmanager
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tl-k8s-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
