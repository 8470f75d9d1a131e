"""The kubelet's PodResources API: which pod holds which device on this node.

The kubelet serves ``v1.PodResourcesLister`` over gRPC on a unix socket, by default
`DEFAULT_SOCKET` (``/var/lib/kubelet/pod-resources/kubelet.sock``). Its ``List`` answers, for
every pod on the node, the devices each container was given by a device plugin. The NVIDIA
device plugin reports resource ``nvidia.com/gpu`` with GPU UUIDs (``GPU-…``, the ids NVML
knows) as device ids; its MIG strategies report MIG UUIDs (``MIG-…``, under ``nvidia.com/gpu``
or ``nvidia.com/mig-<profile>``), and GPU sharing by time-slicing reports replicas as
``GPU-…::<n>``. What the ids mean for metering is `meters.pods`'s business; this module only
asks and returns what the kubelet said, as plain frozen dataclasses.

Messages
    The few message types ``List`` needs are declared here at run time, from a
    ``FileDescriptorProto`` in a private descriptor pool, instead of committing code generated
    from the upstream ``.proto``. Field numbers, as in Kubernetes'
    ``staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`` (checked there; they are
    wire format and never change)::

        ListPodResourcesRequest  {}
        ListPodResourcesResponse {repeated PodResources pod_resources = 1}
        PodResources             {string name = 1; string namespace = 2;
                                  repeated ContainerResources containers = 3}
        ContainerResources       {string name = 1; repeated ContainerDevices devices = 2;
                                  repeated int64 cpu_ids = 3}
        ContainerDevices         {string resource_name = 1; repeated string device_ids = 2;
                                  TopologyInfo topology = 3}
        TopologyInfo             {repeated NUMANode nodes = 1}
        NUMANode                 {int64 ID = 1}

    Fields left out (memory, dynamic_resources) are skipped by the parser as unknown fields.
    Devices allocated through Dynamic Resource Allocation (DRA claims) appear only there, so
    they are not seen here.

Permissions
    The kubelet creates the socket as root and leaves its mode to the umask (0755 as usually
    run), and connecting to a unix socket needs write permission on it, so in practice only
    uid 0 can talk to it (NVIDIA's dcgm-exporter runs as root for this reason). An unprivileged
    meter (uid 10001) reaches it through `PodResourcesRelay` (``thermoledger
    pod-resources-relay``): a byte relay that runs as uid 0 with every capability dropped, in
    its own small container, and offers the same API on a socket the meter's group may use.
    The API is read-only (List, Get, GetAllocatableResources), so the relay hands out nothing
    but the node's allocations.

Errors
    `PodResourcesUnavailable` (socket missing, not a socket, refused, no answer in time) and
    `PodResourcesError` (the kubelet answered with an error, e.g. no v1 API), both
    `meters.errors.MeterError`, each naming the socket and the fix. ``grpcio`` and ``protobuf``
    are the ``kubernetes`` extra, imported only when a client or relay is built.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .errors import MeterError

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

__all__ = [
    "DEFAULT_SOCKET",
    "GPU_RESOURCE_PREFIX",
    "LIST_METHOD",
    "SERVICE",
    "ContainerDevices",
    "ContainerResources",
    "DeviceAllocation",
    "PodResources",
    "PodResourcesClient",
    "PodResourcesError",
    "PodResourcesRelay",
    "PodResourcesUnavailable",
    "check_socket",
    "decode_list_response",
    "encode_list_response",
    "gpu_allocations",
    "list_pod_gpus",
    "message_class",
]

_LOG = logging.getLogger(__name__)
DEFAULT_SOCKET: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"
SERVICE: Final = "v1.PodResourcesLister"
LIST_METHOD: Final = f"/{SERVICE}/List"
GPU_RESOURCE_PREFIX: Final = "nvidia.com/"
"""Resources of the NVIDIA device plugin: ``nvidia.com/gpu``, ``nvidia.com/mig-1g.10gb`` …"""
_INSTALL_HINT: Final = (
    "pod attribution needs grpcio and protobuf: pip install 'thermoledger[kubernetes]'"
)
_RELAY_CHUNK: Final = 64 * 1024


class PodResourcesError(RuntimeError, MeterError):
    """The kubelet's PodResources API answered with an error, or the answer was unreadable."""


class PodResourcesUnavailable(PodResourcesError):
    """The PodResources socket is missing, not a socket, refuses us, or gave no answer in time."""


@dataclass(frozen=True, slots=True)
class ContainerDevices:
    """Devices of one resource given to a container.

    Attributes:
        resource_name: The extended resource, e.g. ``nvidia.com/gpu``.
        device_ids: The device plugin's ids (for NVIDIA GPUs: ``GPU-…`` UUIDs).
    """

    resource_name: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContainerResources:
    """One container of a pod and the devices it holds."""

    name: str
    devices: tuple[ContainerDevices, ...] = ()


@dataclass(frozen=True, slots=True)
class PodResources:
    """One pod on the node, as the kubelet lists it (no uid: the API does not give one)."""

    namespace: str
    name: str
    containers: tuple[ContainerResources, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class DeviceAllocation:
    """One device held by one container: a row of the kubelet's answer.

    Attributes:
        namespace: The pod's namespace.
        pod: The pod's name.
        container: The container's name.
        resource_name: The resource, e.g. ``nvidia.com/gpu``.
        device_id: The device plugin's id (``GPU-…``, ``MIG-…``, ``GPU-…::1`` …).
    """

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_id: str


# -- messages -------------------------------------------------------------------------------------


def _import_protobuf() -> Any:
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as e:
        raise PodResourcesError(_INSTALL_HINT) from e
    return descriptor_pb2, descriptor_pool, message_factory


@cache
def _pool() -> Any:
    """A private descriptor pool holding the ``v1`` messages of the module docstring."""
    descriptor_pb2, descriptor_pool, _ = _import_protobuf()
    field = descriptor_pb2.FieldDescriptorProto
    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    string, int64, message = field.TYPE_STRING, field.TYPE_INT64, field.TYPE_MESSAGE
    layout: dict[str, list[tuple[str, int, int, int, str]]] = {
        "ListPodResourcesRequest": [],
        "ListPodResourcesResponse": [("pod_resources", 1, message, many, ".v1.PodResources")],
        "PodResources": [
            ("name", 1, string, one, ""),
            ("namespace", 2, string, one, ""),
            ("containers", 3, message, many, ".v1.ContainerResources"),
        ],
        "ContainerResources": [
            ("name", 1, string, one, ""),
            ("devices", 2, message, many, ".v1.ContainerDevices"),
            ("cpu_ids", 3, int64, many, ""),
        ],
        "ContainerDevices": [
            ("resource_name", 1, string, one, ""),
            ("device_ids", 2, string, many, ""),
            ("topology", 3, message, one, ".v1.TopologyInfo"),
        ],
        "TopologyInfo": [("nodes", 1, message, many, ".v1.NUMANode")],
        "NUMANode": [("ID", 1, int64, one, "")],
    }
    proto = descriptor_pb2.FileDescriptorProto(
        name="thermoledger/kubelet_podresources_v1.proto", package="v1", syntax="proto3"
    )
    for name, fields in layout.items():
        declared = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = declared.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


def message_class(name: str) -> type[Message]:
    """The protobuf class of one ``v1`` message (``"ListPodResourcesResponse"`` …).

    Raises:
        PodResourcesError: protobuf is not installed.
        KeyError: No such message here.
    """
    _, _, message_factory = _import_protobuf()
    cls: type[Message] = message_factory.GetMessageClass(
        _pool().FindMessageTypeByName(f"v1.{name}")
    )
    return cls


def encode_list_response(pods: Sequence[PodResources]) -> bytes:
    """Serialise a ``ListPodResourcesResponse`` (what the kubelet sends; fakes use it)."""
    response: Any = message_class("ListPodResourcesResponse")()
    for pod in pods:
        entry = response.pod_resources.add(name=pod.name, namespace=pod.namespace)
        for container in pod.containers:
            held = entry.containers.add(name=container.name)
            for devices in container.devices:
                held.devices.add(
                    resource_name=devices.resource_name, device_ids=list(devices.device_ids)
                )
    data: bytes = response.SerializeToString()
    return data


def decode_list_response(data: bytes) -> tuple[PodResources, ...]:
    """Parse a ``ListPodResourcesResponse``.

    Raises:
        PodResourcesError: The bytes are not such a message.
    """
    cls = message_class("ListPodResourcesResponse")
    try:
        response: Any = cls.FromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError, whatever the backend
        raise PodResourcesError(f"unreadable ListPodResourcesResponse: {e}") from e
    return tuple(
        PodResources(
            namespace=str(pod.namespace),
            name=str(pod.name),
            containers=tuple(
                ContainerResources(
                    name=str(container.name),
                    devices=tuple(
                        ContainerDevices(str(d.resource_name), tuple(str(i) for i in d.device_ids))
                        for d in container.devices
                    ),
                )
                for container in pod.containers
            ),
        )
        for pod in response.pod_resources
    )


def gpu_allocations(
    pods: Sequence[PodResources], resource_prefix: str = GPU_RESOURCE_PREFIX
) -> tuple[DeviceAllocation, ...]:
    """Flatten pods into one row per device whose resource starts with ``resource_prefix``.

    Returns:
        The rows, sorted (namespace, pod, container, resource, id); repeats removed.
    """
    rows = {
        DeviceAllocation(pod.namespace, pod.name, container.name, devices.resource_name, device)
        for pod in pods
        for container in pod.containers
        for devices in container.devices
        if devices.resource_name.startswith(resource_prefix)
        for device in devices.device_ids
    }
    return tuple(sorted(rows))


# -- the client -----------------------------------------------------------------------------------


def _import_grpc() -> Any:
    try:
        import grpc
    except ImportError as e:
        raise PodResourcesError(_INSTALL_HINT) from e
    return grpc


def check_socket(path: Path) -> None:
    """Raise a clear `PodResourcesUnavailable` when ``path`` is missing or not a socket."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PodResourcesUnavailable(
            f"the kubelet's PodResources socket {path} does not exist: mount the node's "
            f"{path.parent} into the meter's pod (hostPath, read-only), or pass its path with "
            "--pod-resources-socket"
        ) from None
    except OSError as e:
        raise PodResourcesUnavailable(f"cannot look at the PodResources socket {path}: {e}") from e
    if not stat.S_ISSOCK(mode):
        raise PodResourcesUnavailable(f"{path} is not a unix socket (the kubelet's PodResources)")


class PodResourcesClient:
    """A client of the kubelet's ``v1.PodResourcesLister`` on a unix socket.

    One gRPC channel is kept between calls and dropped after a failed one, so a restarted
    kubelet is reached again on the next call (not after gRPC's reconnect backoff).

    Args:
        socket_path: The kubelet's socket (default `DEFAULT_SOCKET`), or a relay's.
        timeout_s: Deadline of one call, s.

    Raises:
        PodResourcesError: grpcio or protobuf is not installed.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str] = DEFAULT_SOCKET, *, timeout_s: float = 5.0
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._grpc = _import_grpc()
        message_class("ListPodResourcesResponse")  # fail here, not at the first poll
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._list: Callable[..., bytes] | None = None

    def list_pods(self) -> tuple[PodResources, ...]:
        """Every pod on the node with the devices of each container (one ``List`` call).

        Raises:
            PodResourcesUnavailable: The socket is missing, refuses us, or no answer came in
                ``timeout_s``.
            PodResourcesError: The kubelet answered with an error.
        """
        check_socket(self.socket_path)
        with self._lock:
            call = self._list
            if call is None:
                channel = self._grpc.insecure_channel(f"unix://{self.socket_path.resolve()}")
                self._channel = channel
                call = self._list = channel.unary_unary(
                    LIST_METHOD,
                    request_serializer=None,  # raw bytes: an empty ListPodResourcesRequest
                    response_deserializer=None,  # raw bytes: decoded below
                )
        try:
            data = call(b"", timeout=self.timeout_s)
        except self._grpc.RpcError as e:
            self._drop_channel()
            raise self._translate(e) from e
        return decode_list_response(data)

    def list_devices(
        self, resource_prefix: str = GPU_RESOURCE_PREFIX
    ) -> tuple[DeviceAllocation, ...]:
        """`list_pods` flattened to one row per device of a resource (default: NVIDIA's)."""
        return gpu_allocations(self.list_pods(), resource_prefix)

    def _translate(self, error: Any) -> PodResourcesError:
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        codes = self._grpc.StatusCode
        where = f"the kubelet's PodResources API at {self.socket_path}"
        if code == codes.DEADLINE_EXCEEDED:
            return PodResourcesUnavailable(f"{where} gave no answer within {self.timeout_s:g} s")
        if code == codes.UNAVAILABLE:
            hint = ""
            if "ermission denied" in str(details):
                hint = (
                    ": the socket belongs to root; reach it through `thermoledger "
                    "pod-resources-relay` running as uid 0 (see deploy/README.md)"
                )
            return PodResourcesUnavailable(f"cannot reach {where} ({details}){hint}")
        if code == codes.UNIMPLEMENTED:
            return PodResourcesError(
                f"{where} does not serve {LIST_METHOD} ({details}); the v1 API needs "
                "Kubernetes 1.20 or newer"
            )
        name = getattr(code, "name", str(code))
        return PodResourcesError(f"{where} answered {name}: {details}")

    def _drop_channel(self) -> None:
        with self._lock:
            channel, self._channel, self._list = self._channel, None, None
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close the channel (idempotent; a later call opens a new one)."""
        self._drop_channel()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def list_pod_gpus(
    socket_path: str | os.PathLike[str] = DEFAULT_SOCKET, timeout_s: float = 5.0
) -> tuple[DeviceAllocation, ...]:
    """Every NVIDIA device (``nvidia.com/*``) held by a container on this node: one ``List``.

    Args:
        socket_path: The kubelet's PodResources socket (or a relay's).
        timeout_s: Deadline of the call, s.

    Returns:
        One `DeviceAllocation` per (pod, container, device), sorted.

    Raises:
        PodResourcesUnavailable: The socket is missing, refuses us, or did not answer in time.
        PodResourcesError: The kubelet answered with an error, or grpcio/protobuf is missing.
    """
    with PodResourcesClient(socket_path, timeout_s=timeout_s) as client:
        return client.list_devices()


# -- the relay ------------------------------------------------------------------------------------


class PodResourcesRelay:
    """Offers the kubelet's root-only socket on a socket of our own (see the module docstring).

    Bytes are copied both ways unchanged (HTTP/2 inside is none of its business); each accepted
    connection opens its own connection upstream, and either side closing closes both. An
    upstream that refuses (kubelet restarting) just closes the client's connection: the
    client's next call tries again.

    Args:
        upstream: The kubelet's socket.
        listen: Where to listen (replaced if a stale socket is there; its directory must exist).
        mode: Permission bits of the listening socket (default 0660: owner and group, so a
            meter in the relay's group, not the world, may connect).
        logger: Where problems go.
    """

    def __init__(
        self,
        upstream: str | os.PathLike[str],
        listen: str | os.PathLike[str],
        *,
        mode: int = 0o660,
        logger: logging.Logger | None = None,
    ) -> None:
        self.upstream = Path(upstream)
        self.listen = Path(listen)
        self.mode = mode
        self._log = logger if logger is not None else _LOG
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.connections = 0
        """Connections accepted so far."""

    def start(self) -> PodResourcesRelay:
        """Listen and serve from a daemon thread.

        Raises:
            PodResourcesUnavailable: The listening socket cannot be made.
        """
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.listen.stat().st_mode):
                self.listen.unlink()  # a stale socket of an earlier run
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.listen))
            os.chmod(self.listen, self.mode)
            server.listen(16)
        except OSError as e:
            server.close()
            raise PodResourcesUnavailable(f"cannot listen on {self.listen}: {e}") from e
        self._server = server
        self._thread = threading.Thread(
            target=self._accept, name="thermoledger-pod-resources-relay", daemon=True
        )
        self._thread.start()
        self._log.info("relaying %s to %s (mode %o)", self.upstream, self.listen, self.mode)
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            self.connections += 1
            threading.Thread(
                target=self._serve, args=(client,), name="thermoledger-relay-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(str(self.upstream))
        except OSError as e:
            self._warn_once(
                f"connect:{e.errno}",
                "cannot reach the kubelet at %s (%s)%s",
                self.upstream,
                e.strerror or e,
                ": run the relay as uid 0" if e.errno in (errno.EACCES, errno.EPERM) else "",
            )
            upstream.close()
            client.close()
            return
        with self._lock:
            if self._closed.is_set():
                upstream.close()
                client.close()
                return
            self._open.update((client, upstream))
        back = threading.Thread(
            target=self._pump, args=(upstream, client), name="thermoledger-relay-pump", daemon=True
        )
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Copy until ``source`` ends, then end ``sink``'s writing side."""
        try:
            while data := source.recv(_RELAY_CHUNK):
                sink.sendall(data)
        except OSError:
            pass  # either side went away: the shutdown below tells the other
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(message, *args)

    def close(self) -> None:
        """Stop listening, close every relayed connection, remove the socket (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._open.clear()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()

    def __enter__(self) -> PodResourcesRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
