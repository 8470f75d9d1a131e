"""Per-pod GPU energy on a Kubernetes node: one run per pod that holds GPUs, one for the rest.

``thermoledger sidecar --attribute-pods`` (the DaemonSet in
``deploy/kubernetes/meter/meter-daemonset.yaml``) asks the kubelet every ``poll_s`` seconds
(default 5) which container holds which device (`meters.k8s`, the PodResources API) and keeps:

- one run per pod holding whole GPUs on this node, metering exactly those GPUs, named
  ``<namespace>/<pod>`` and tagged ``k8s.namespace``, ``k8s.pod``, ``k8s.node``,
  ``k8s.containers`` (the containers holding them) and ``k8s.attribution=pod``;
- one run for the node's **unallocated** GPUs, those no pod holds alone
  (``k8s.attribution=unallocated``): an idle GPU still draws 50-100 W, and that energy is real
  and must not vanish from the node's total.

Every GPU of the node is in exactly one of these runs at any time, so the runs add up to the
node (less the switch-over gaps below) and no GPU is counted twice. Each run is a
`meters.api.Meter` over a backend opened on that run's GPUs only (by UUID); they share the spool
directory (each Meter opens its own connections to the SQLite spool and control files, which
SQLite serialises) and one uploader sends every run in it.

Which GPUs a pod holds (`assign`)
    Devices of ``nvidia.com/*`` resources only. A ``GPU-…`` id that NVML lists on this node (or
    a plain NVML index, the device plugin's ``index`` id strategy) is that whole GPU. The rest
    cannot be metered per pod, since NVML reports power and energy for a whole GPU only, so the
    GPU stays in the unallocated run, and the reason is logged once:

    - a MIG device (``MIG-…``): its parent GPU is shared by every instance on it;
    - a time-slicing replica (``GPU-…::<n>``), or a GPU listed for two pods: shared;
    - an id that names no GPU of this node (another vendor's naming, a stale id).

Run ids
    Derived from the meter's own run id (``--run-id``, in the DaemonSet
    ``k8s-node:<node>:<meter pod uid>``): ``uuid5`` of ``<base>/pod/<namespace>/<pod>`` and of
    ``<base>/unallocated``. A restarted meter container (same pod, same spool) therefore
    resumes each pod's run and its chunk numbering; a new meter pod (a rollout, a new spool)
    starts new runs, as reusing ids with a fresh spool would reuse chunk numbers. The API gives
    no pod uid, so a pod recreated under the same name on the same node (a StatefulSet
    replica) continues its predecessor's run.

Life cycle
    A pod seen for the first time gets its meter; a pod no longer listed (or holding no GPU
    any more) has its meter stopped and its run marked finished (the pod's exit status is not
    in the API: ``finished``, no exit code). When GPUs move (a pod gone, another started, or a
    GPU freed or taken), every run whose GPU set changed is stopped and started again on its
    new set: the pods' runs are new or ended, the unallocated run is the same run resumed (its
    status goes ``finished`` then ``running`` again; the service keeps its first end, and each
    later end records the grown figures in the ledger). A pod finished but still listed by the
    kubelet keeps its GPUs, and their idle energy, until the kubelet drops it.

Switch-over gap
    When a GPU passes from one run to another, the energy between the old meter's last
    reading and the new meter's first is not counted anywhere. The backends of the new meters
    are opened first (NVML's open and probe is the slow part), then the old meters are stopped
    (flush and spool, no upload: the shared uploader sends later), then the new ones started.
    The gap is the time since the old meter's last tick (0 to one ``interval_s``, half of it on
    average: 50 ms at the default 0.1 s) plus stopping and starting the meters, per changed
    run: about 10 ms, mostly the spool's commits (its fsyncs), on an idle 2-core test machine,
    and 10-50 ms seen there under load. Every unallocated GPU shares a gap when the
    unallocated set changes. ``tests/meters/test_pods.py`` measures the gaps (and prints
    them) and checks that they are the only energy missing: per GPU, no instant is in two
    runs, and the runs' energy is the counter's rise over the time they cover. At 700 W a
    switch costs some 40 J on average (about 75 J at worst with a 10 ms switch), seconds of
    one GPU, beside pods that run for minutes or hours. `SyncReport.switch_s` gives each
    switch's duration, which is logged with it.

When the kubelet does not answer
    Logged once per outage, with the fix (`meters.k8s` names the socket and what to mount).
    Before the first answer, every GPU is metered in the unallocated run: the node's energy is
    measured, only not split. After an answer, the last known assignment is kept for
    ``stale_after_s`` (default 60 s: a kubelet restart), then every GPU goes to the unallocated
    run until the kubelet answers again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .api import Meter
from .backends.base import PowerBackend
from .control import ControlStore
from .discovery import open_backend
from .errors import MeterError
from .k8s import DEFAULT_SOCKET, DeviceAllocation, PodResourcesClient
from .runid import NODE_METER_ENV, RUN_ID_ENV, canonical_run_id
from .settings import ENV_PREFIX, MeterSettings, SettingsError
from .spool import Spool
from .uploader import PushResult, Uploader

if TYPE_CHECKING:
    import httpx

    from .sampler import MeterSummary

__all__ = [
    "DEFAULT_POLL_S",
    "DEFAULT_STALE_AFTER_S",
    "Assignment",
    "NodeGpu",
    "PodAttribution",
    "PodKey",
    "PodSettings",
    "RunTotal",
    "SyncReport",
    "assign",
]

_LOG = logging.getLogger(__name__)
DEFAULT_POLL_S: Final = 5.0
DEFAULT_TIMEOUT_S: Final = 5.0
DEFAULT_STALE_AFTER_S: Final = 60.0
START_RETRY_S: Final = 60.0
"""A run whose meter failed to start is tried again after this long, s (not every poll)."""
_GPU_RESOURCES: Final = "nvidia.com/"
_UNALLOCATED_NOTE: Final = "idle GPUs, and GPUs shared by MIG or time-slicing (never split)"
# Settings the node meter keeps for itself: its Meters upload nothing (one shared uploader
# does), take their run id and devices from here, and never defer to another node meter.
_NOT_FOR_METERS: Final = frozenset(
    {
        ENV_PREFIX + "SERVER",
        ENV_PREFIX + "TOKEN",
        ENV_PREFIX + "GPUS",
        RUN_ID_ENV,
        NODE_METER_ENV,
    }
)

DeviceOpener = Callable[[Sequence[int | str] | None], PowerBackend]
"""Opens the given GPUs (NVML UUIDs or indices; None: every GPU of the node)."""


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodSettings:
    """How the node meter finds out which pod holds which GPU.

    Attributes:
        socket_path: The kubelet's PodResources socket, or a relay's.
        poll_s: Seconds between two questions to the kubelet.
        node: The node's name (run names, tags and device keys).
        timeout_s: Deadline of one question, s.
        stale_after_s: How long the last answer stands while the kubelet is silent, s.
    """

    socket_path: str = DEFAULT_SOCKET
    poll_s: float = DEFAULT_POLL_S
    node: str = field(default_factory=socket.gethostname)
    timeout_s: float = DEFAULT_TIMEOUT_S
    stale_after_s: float = DEFAULT_STALE_AFTER_S

    def __post_init__(self) -> None:
        for name in ("poll_s", "timeout_s", "stale_after_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number of seconds, got {value!r}")
        if not self.node.strip():
            raise SettingsError("the node name cannot be empty")
        if not self.socket_path.strip():
            raise SettingsError("the PodResources socket path cannot be empty")

    @classmethod
    def resolve(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        socket_path: str | None = None,
        poll_s: float | None = None,
        node: str | None = None,
    ) -> PodSettings:
        """Explicit values (None: not given), then the environment, then the defaults.

        Environment: ``THERMOLEDGER_POD_RESOURCES_SOCKET``, ``THERMOLEDGER_POD_POLL_S``,
        ``THERMOLEDGER_NODE_NAME`` (else the host name).

        Raises:
            SettingsError: A value is unusable; the message names where it came from.
        """
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        poll = poll_s
        if poll is None and (raw := text("POD_POLL_S")) is not None:
            try:
                poll = float(raw)
            except ValueError:
                raise SettingsError(
                    f"{ENV_PREFIX}POD_POLL_S must be a number, got {raw!r}"
                ) from None
        return cls(
            socket_path=socket_path or text("POD_RESOURCES_SOCKET") or DEFAULT_SOCKET,
            poll_s=DEFAULT_POLL_S if poll is None else poll,
            node=node or text("NODE_NAME") or socket.gethostname(),
        )


# -- who holds what -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeGpu:
    """A GPU of this node, as NVML lists it.

    Attributes:
        uid: Its UUID (``GPU-…``), or the backend's placeholder for a GPU that did not answer.
        index: Its NVML index.
    """

    uid: str
    index: int

    @property
    def selector(self) -> int | str:
        """How to open it alone: by UUID, or by index when NVML gave none."""
        return self.uid if self.uid.startswith("GPU-") else self.index


@dataclass(frozen=True, slots=True, order=True)
class PodKey:
    """A pod on this node (the PodResources API names pods, it gives no uid)."""

    namespace: str
    pod: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which run meters which GPU, from one answer of the kubelet.

    Attributes:
        pods: Per pod, the GPUs (UUIDs) it holds alone and whole; only pods holding some.
        containers: Per pod, the containers holding those GPUs.
        unallocated: Every other GPU of the node.
        notes: Why some device was not attributed to its pod: (once-key, message), logged once
            per key.
    """

    pods: Mapping[PodKey, frozenset[str]]
    containers: Mapping[PodKey, tuple[str, ...]]
    unallocated: frozenset[str]
    notes: tuple[tuple[str, str], ...] = ()


def assign(
    allocations: Sequence[DeviceAllocation],
    gpus: Sequence[NodeGpu],
    *,
    mig_parent: Callable[[str], str | None] | None = None,
) -> Assignment:
    """Split the node's GPUs between the pods holding them and the unallocated run.

    Args:
        allocations: The kubelet's rows (`meters.k8s.DeviceAllocation`).
        gpus: Every GPU of the node.
        mig_parent: The parent GPU's UUID of a MIG device UUID (None: unknown).

    Returns:
        The assignment (see the module docstring for the rules).
    """
    by_uuid = {g.uid.lower(): g.uid for g in gpus}
    by_index = {str(g.index): g.uid for g in gpus}
    claims: dict[str, set[PodKey]] = {}
    holders: dict[tuple[PodKey, str], set[str]] = {}  # (pod, gpu) -> containers
    shared: dict[str, str] = {}  # gpu -> why it cannot be split
    notes: dict[str, str] = {}
    for row in allocations:
        if not row.resource_name.startswith(_GPU_RESOURCES):
            continue
        key = PodKey(row.namespace, row.pod)
        device = row.device_id.strip()
        base, replica, _ = device.partition("::")
        whole = by_uuid.get(device.lower()) or (by_index.get(device) if device.isdigit() else None)
        if whole is not None:
            claims.setdefault(whole, set()).add(key)
            holders.setdefault((key, whole), set()).add(row.container)
            continue
        parent = by_uuid.get(base.lower()) if replica else None
        if parent is not None:
            shared.setdefault(parent, "shared by time-slicing replicas")
            notes[f"replica:{key}:{device}"] = (
                f"pod {key} holds {device}, a shared replica of GPU {parent}: NVML meters only "
                "the whole GPU, so its energy stays in the node's unallocated run (not split)"
            )
            continue
        if device.upper().startswith("MIG-"):
            parent = _known(mig_parent(device) if mig_parent is not None else None, by_uuid)
            if parent is not None:
                shared.setdefault(parent, "split into MIG instances")
                notes[f"mig:{key}:{device}"] = (
                    f"pod {key} holds MIG device {device} of GPU {parent}: NVML meters only the "
                    "whole GPU, shared by its MIG instances, so its energy stays in the node's "
                    "unallocated run (not split between instances)"
                )
                continue
        notes[f"unknown:{key}:{device}"] = (
            f"pod {key} holds {row.resource_name} device {device!r}, which names no GPU NVML "
            "lists on this node: nothing is metered for it; every GPU of the node stays in "
            "some run (the unallocated one when no pod holds it)"
        )
    pods: dict[PodKey, set[str]] = {}
    for gpu, keys in sorted(claims.items()):
        if len(keys) > 1:
            shared.setdefault(gpu, "listed for several pods")
            names = ", ".join(str(k) for k in sorted(keys))
            notes[f"shared:{gpu}:{names}"] = (
                f"GPU {gpu} is listed for several pods ({names}): its energy stays in the node's "
                "unallocated run (not split)"
            )
            continue
        if gpu in shared:
            notes[f"mixed:{gpu}"] = (
                f"GPU {gpu} is held whole by pod {next(iter(keys))} and also {shared[gpu]}: "
                "its energy stays in the node's unallocated run (not split)"
            )
            continue
        pods.setdefault(next(iter(keys)), set()).add(gpu)
    owned = {gpu for held in pods.values() for gpu in held}
    return Assignment(
        pods={key: frozenset(held) for key, held in sorted(pods.items())},
        containers={
            key: tuple(sorted({c for gpu in held for c in holders[(key, gpu)]}))
            for key, held in sorted(pods.items())
        },
        unallocated=frozenset(g.uid for g in gpus if g.uid not in owned),
        notes=tuple(sorted(notes.items())),
    )


def _known(uuid: str | None, by_uuid: Mapping[str, str]) -> str | None:
    return None if uuid is None else by_uuid.get(uuid.lower())


# -- the runs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Owner:
    """What one run meters: its id, name, tags and GPUs."""

    run_id: str
    name: str
    gpus: frozenset[str]
    tags: Mapping[str, str]


@dataclass(slots=True)
class _Active:
    owner: _Owner
    meter: Meter
    backend: PowerBackend


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one `PodAttribution.sync` did.

    Attributes:
        listed: The kubelet answered.
        error: Why it did not (None when it did).
        started: Run ids whose meter started.
        stopped: Run ids whose meter stopped.
        switch_s: From the first meter stopped to the last started, s (0 when none changed):
            the part of the switch-over gap this process adds to the sampling interval.
    """

    listed: bool
    error: str | None
    started: tuple[str, ...]
    stopped: tuple[str, ...]
    switch_s: float


@dataclass(slots=True)
class RunTotal:
    """Energy metered in one run by this process, over all its meters so far.

    Attributes:
        run_id: The run.
        name: Its name.
        gpus: The GPUs it metered (every set it had).
        energy_j: Energy, J.
        energy_low_j: Lower end of its band, J.
        energy_high_j: Upper end of its band, J.
        stints: How many meters it had (more than one: the unallocated run, or a restart).
    """

    run_id: str
    name: str
    gpus: set[str] = field(default_factory=set)
    energy_j: float = 0.0
    energy_low_j: float = 0.0
    energy_high_j: float = 0.0
    stints: int = 0


class PodAttribution:
    """Keeps one `Meter` per GPU-holding pod of the node and one for its unallocated GPUs.

    Drive it with `start`, then `sync` (one question to the kubelet and the switches it calls
    for; tests call it directly) or `run` (sync every ``poll_s`` until told to stop), then
    `stop`. See the module docstring for the rules.

    Args:
        settings: Spool directory, interval, chunk length; server, token and upload timeout for
            the one uploader (None server: offline, the runs wait in the spool).
        node: The node's name.
        base_run_id: The node meter's run id, from which every run id here is derived.
        list_devices: Asks the kubelet (`meters.k8s.PodResourcesClient.list_devices`).
        open_devices: Opens GPUs by UUID or index, or every GPU of the node for None.
        name: The unallocated run's name (default: ``"<node> (unallocated GPUs)"``).
        kind: The runs' kind (default ``other``: a pod may train or serve).
        tags: Tags of every run (``k8s.node`` is added).
        env: Environment for the Meters (``THERMOLEDGER_*`` only, less server, token, GPUs and
            run id, which this class decides).
        poll_s: Seconds between two syncs in `run`.
        stale_after_s: How long the last answer stands while the kubelet is silent, s.
        logger: Where the attribution logs (the Meters log warnings only, below it).
        upload_transport: The uploader's httpx transport (``--metrics-port`` counts failures).
        monotonic: Clock for ``stale_after_s`` and the start retry (tests pass a fake).
        close_lister: Releases what ``list_devices`` holds (its gRPC channel), at `stop`.
    """

    def __init__(
        self,
        settings: MeterSettings,
        *,
        node: str,
        base_run_id: str,
        list_devices: Callable[[], Sequence[DeviceAllocation]],
        open_devices: DeviceOpener,
        name: str | None = None,
        kind: str = "other",
        tags: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        poll_s: float = DEFAULT_POLL_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        logger: logging.Logger | None = None,
        upload_transport: httpx.BaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        close_lister: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.base_run_id = canonical_run_id(base_run_id)
        self.kind = kind
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self._list_devices = list_devices
        self._open_devices = open_devices
        self._unallocated_name = (
            f"{name} (unallocated GPUs)" if name else f"{node} (unallocated GPUs)"
        )
        self._tags = {"k8s.node": node, **dict(tags or {})}
        source = os.environ if env is None else env
        self._meter_env = {
            k: v for k, v in source.items() if k.startswith(ENV_PREFIX) and k not in _NOT_FOR_METERS
        }
        self._log = logger if logger is not None else _LOG
        # The Meters' own info lines ("offline", "metering N devices") would mislead here:
        # this class says what happens; their warnings still come through.
        self._meter_log = self._log.getChild("meter")
        self._meter_log.setLevel(logging.WARNING)
        self._transport = upload_transport
        self._monotonic = monotonic
        self._close_lister = close_lister
        self._lock = threading.Lock()  # _active, read by the metrics thread
        self._active: dict[str, _Active] = {}
        self._gpus: tuple[NodeGpu, ...] = ()
        self._node_backend: PowerBackend | None = None
        self._assignment: Assignment | None = None
        self._failing_since: float | None = None
        self._stale = False
        self._retry_at: dict[str, float] = {}
        self._noted: set[str] = set()
        self._warned: set[str] = set()
        self._uploader: Uploader | None = None
        self._upload_stores: tuple[Spool, ControlStore] | None = None
        self.upload: PushResult | None = None
        self.totals: dict[str, RunTotal] = {}
        """Per run id, what this process metered in it (updated as meters stop)."""
        self.kubelet_up = False
        """Whether the kubelet answered the last question."""

    @classmethod
    def for_node(
        cls,
        settings: MeterSettings,
        pods: PodSettings,
        *,
        base_run_id: str,
        **options: Any,
    ) -> PodAttribution:
        """The production wiring: the kubelet's socket and NVML (``settings.backend``).

        Raises:
            meters.k8s.PodResourcesError: grpcio or protobuf is missing.
            SettingsError: ``settings`` asks for GPUs, or for a backend other than NVML.
        """
        if settings.gpus is not None:
            raise SettingsError(
                "pod attribution meters every GPU of the node: leave --gpus / THERMOLEDGER_GPUS "
                "unset"
            )
        if settings.backend not in ("auto", "nvml"):
            raise SettingsError(
                "pod attribution maps the device plugin's GPU UUIDs to NVML devices: use the "
                f"nvml backend, not {settings.backend}"
            )
        client = PodResourcesClient(pods.socket_path, timeout_s=pods.timeout_s)

        def open_devices(gpus: Sequence[int | str] | None) -> PowerBackend:
            return open_backend("nvml", gpus=gpus, power_reading=settings.power_reading)[0]

        return cls(
            settings,
            node=pods.node,
            base_run_id=base_run_id,
            list_devices=client.list_devices,
            open_devices=open_devices,
            close_lister=client.close,
            poll_s=pods.poll_s,
            stale_after_s=pods.stale_after_s,
            **options,
        )

    # -- ids ----------------------------------------------------------------------------------

    def pod_run_id(self, pod: PodKey) -> str:
        """The run id of a pod on this node (stable for a given node meter run id)."""
        return canonical_run_id(f"{self.base_run_id}/pod/{pod.namespace}/{pod.pod}")

    @property
    def unallocated_run_id(self) -> str:
        """The run id of this node's unallocated GPUs."""
        return canonical_run_id(f"{self.base_run_id}/unallocated")

    @property
    def gpus(self) -> tuple[NodeGpu, ...]:
        """Every GPU of the node (known after `start`)."""
        return self._gpus

    def meters(self) -> dict[str, Meter]:
        """The running meters by run id (a snapshot)."""
        with self._lock:
            return {run_id: a.meter for run_id, a in self._active.items()}

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> PodAttribution:
        """Open the node's GPUs, start the uploader, and sync once.

        Raises:
            MeterError: The node's GPUs cannot be opened (no driver, no GPU).
        """
        backend = self._open_devices(None)
        self._node_backend = backend
        self._gpus = tuple(NodeGpu(d.uid, d.index) for d in backend.devices())
        self._log.info(
            "node %s: %d GPU(s) %s; asking the kubelet every %g s which pod holds which",
            self.node,
            len(self._gpus),
            ", ".join(g.uid for g in self._gpus) or "(none)",
            self.poll_s,
        )
        if self.settings.api_url is not None:
            directory = self.settings.spool_dir
            self._upload_stores = (
                Spool.in_directory(directory),
                ControlStore.in_directory(directory),
            )
            self._uploader = Uploader(
                *self._upload_stores,
                api_url=self.settings.api_url,
                token=self.settings.token,
                transport=self._transport,
                logger=self._log,
            )
            self._uploader.start()
        self.sync()
        return self

    def run(
        self, should_stop: Callable[[], bool], *, sleep: Callable[[float], object] = time.sleep
    ) -> None:
        """Sync every ``poll_s`` seconds until ``should_stop()`` (looked at every 0.2 s)."""
        next_s = time.monotonic() + self.poll_s
        while not should_stop():
            now_s = time.monotonic()
            if now_s >= next_s:
                self.sync()
                next_s = max(next_s + self.poll_s, now_s)
                continue
            sleep(min(0.2, next_s - now_s))

    def sync(self) -> SyncReport:
        """Ask the kubelet once and switch the runs whose GPUs changed.

        The kubelet's and the devices' trouble never raises: it is logged and reported (a
        kubelet that does not answer, GPUs that cannot be opened, a meter that cannot start).
        """
        try:
            allocations = tuple(self._list_devices())
        except Exception as e:
            return self._kubelet_failed(e)
        if self._failing_since is not None:
            self._log.info("the kubelet's PodResources API answers again")
        self._failing_since = None
        self._stale = False
        self.kubelet_up = True
        mig_parent = getattr(self._node_backend, "mig_parent_uuid", None)
        assignment = assign(
            allocations,
            self._gpus,
            mig_parent=self._quiet(mig_parent) if callable(mig_parent) else None,
        )
        for key, message in assignment.notes:
            if key not in self._noted:
                self._noted.add(key)
                self._log.warning("%s", message)
        self._assignment = assignment
        started, stopped, switch_s = self._apply(assignment)
        return SyncReport(True, None, started, stopped, switch_s)

    def _kubelet_failed(self, error: Exception) -> SyncReport:
        now_s = self._monotonic()
        self.kubelet_up = False
        reason = (
            f"{type(error).__name__}: {error}" if not isinstance(error, MeterError) else str(error)
        )
        if self._failing_since is None:
            self._failing_since = now_s
            then = (
                f"the last answer stands for {self.stale_after_s:g} s, then every GPU goes to "
                "the unallocated run"
                if self._assignment is not None
                else "every GPU is metered in the node's unallocated run until it answers"
            )
            self._log.warning("no pod attribution: %s; %s", reason, then)
        fallback = Assignment(
            pods={}, containers={}, unallocated=frozenset(g.uid for g in self._gpus)
        )
        if self._assignment is None:
            started, stopped, switch_s = self._apply(fallback)
        elif now_s - self._failing_since >= self.stale_after_s:
            if not self._stale:
                self._stale = True
                self._log.warning(
                    "the kubelet has not answered for %g s: every GPU now goes to the "
                    "unallocated run until it does",
                    now_s - self._failing_since,
                )
            started, stopped, switch_s = self._apply(fallback)
        else:
            started, stopped, switch_s = (), (), 0.0
        return SyncReport(False, reason, started, stopped, switch_s)

    @staticmethod
    def _quiet(resolve: Callable[[str], str]) -> Callable[[str], str | None]:
        def parent(mig_uuid: str) -> str | None:
            try:
                return resolve(mig_uuid)
            except MeterError:
                return None

        return parent

    def _owners(self, assignment: Assignment) -> dict[str, _Owner]:
        owners: dict[str, _Owner] = {}
        for pod, gpus in assignment.pods.items():
            run_id = self.pod_run_id(pod)
            containers = ",".join(assignment.containers.get(pod, ()))
            tags = {
                **self._tags,
                "k8s.namespace": pod.namespace,
                "k8s.pod": pod.pod,
                "k8s.containers": containers[:200],
                "k8s.attribution": "pod",
            }
            owners[run_id] = _Owner(run_id, str(pod), gpus, tags)
        if assignment.unallocated:
            run_id = self.unallocated_run_id
            tags = {**self._tags, "k8s.attribution": "unallocated", "k8s.note": _UNALLOCATED_NOTE}
            owners[run_id] = _Owner(run_id, self._unallocated_name, assignment.unallocated, tags)
        return owners

    def _apply(self, assignment: Assignment) -> tuple[tuple[str, ...], tuple[str, ...], float]:
        """Stop the meters whose GPUs changed or went, start the new ones; see the docstring."""
        wanted = self._owners(assignment)
        with self._lock:
            active = dict(self._active)
        leaving = [
            a
            for run_id, a in active.items()
            if wanted.get(run_id, None) is None or wanted[run_id].gpus != a.owner.gpus
        ]
        now_s = self._monotonic()
        coming = [
            o
            for run_id, o in wanted.items()
            if (run_id not in active or active[run_id].owner.gpus != o.gpus)
            and self._retry_at.get(run_id, -math.inf) <= now_s
        ]
        if not leaving and not coming:
            return (), (), 0.0
        opened: list[tuple[_Owner, PowerBackend]] = []
        for owner in coming:  # before anything stops: opening is the slow part
            try:
                selectors = [g.selector for g in self._gpus if g.uid in owner.gpus]
                opened.append((owner, self._open_devices(selectors)))
            except Exception as e:
                self._retry_at[owner.run_id] = now_s + START_RETRY_S
                self._log.error(
                    "run %s (%s): cannot open its GPUs (%s); trying again in %g s",
                    owner.run_id,
                    owner.name,
                    e,
                    START_RETRY_S,
                )
        t0_s = time.monotonic()
        stopped = []
        for old in leaving:
            self._stop_one(old)
            stopped.append(old.owner.run_id)
        started = []
        for owner, backend in opened:
            if self._start_one(owner, backend):
                started.append(owner.run_id)
        switch_s = time.monotonic() - t0_s
        changes = [f"stopped {self._label(a.owner)}" for a in leaving]
        changes += [f"started {self._label(o)}" for o, _ in opened]
        self._log.info(
            "node %s: %s (switch %.1f ms)", self.node, "; ".join(changes), switch_s * 1e3
        )
        return tuple(started), tuple(stopped), switch_s

    @staticmethod
    def _label(owner: _Owner) -> str:
        return f"{owner.name} [{', '.join(sorted(owner.gpus))}] (run {owner.run_id})"

    def _start_one(self, owner: _Owner, backend: PowerBackend) -> bool:
        meter = Meter(
            owner.name,
            kind=self.kind,
            run_id=owner.run_id,
            backend=backend,
            interval_s=self.settings.interval_s,
            chunk_s=self.settings.chunk_s,
            counter_interval_s=self.settings.counter_interval_s,
            spool_dir=self.settings.spool_dir,
            tags=owner.tags,
            env=self._meter_env,
            host=self.node,
            logger=self._meter_log,
        ).start()
        if meter.state != "running":
            self._close(backend)
            self._retry_at[owner.run_id] = self._monotonic() + START_RETRY_S
            self._log.error(
                "run %s (%s): its meter did not start (see above); trying again in %g s",
                owner.run_id,
                owner.name,
                START_RETRY_S,
            )
            return False
        self._retry_at.pop(owner.run_id, None)
        with self._lock:
            self._active[owner.run_id] = _Active(owner, meter, backend)
        if self._uploader is not None:
            self._uploader.nudge()
        return True

    def _stop_one(self, active: _Active) -> MeterSummary:
        with self._lock:
            self._active.pop(active.owner.run_id, None)
        summary = active.meter.stop(exit_code=None, failed=False)
        self._close(active.backend)
        total = self.totals.setdefault(
            active.owner.run_id, RunTotal(active.owner.run_id, active.owner.name)
        )
        total.gpus.update(active.owner.gpus)
        if summary.devices:  # a meter that sampled nothing has no energy (NaN), not 0 J
            total.energy_j += summary.energy_j
            total.energy_low_j += summary.energy_low_j
            total.energy_high_j += summary.energy_high_j
        total.stints += 1
        if self._uploader is not None:
            self._uploader.nudge()
        return summary

    def _close(self, backend: PowerBackend) -> None:
        try:
            backend.close()
        except Exception as e:
            key = f"close:{type(e).__name__}"
            if key not in self._warned:
                self._warned.add(key)
                self._log.warning("closing a GPU backend failed: %s", e)

    def stop(self) -> dict[str, RunTotal]:
        """Stop every meter (runs finished), upload for ``upload_timeout_s``, close; never raises.

        Returns:
            `totals`: per run id, what this process metered in it.
        """
        with self._lock:
            active = list(self._active.values())
        for one in active:
            try:
                self._stop_one(one)
            except Exception as e:  # one meter's trouble must not keep the others running
                self._log.error("stopping run %s failed: %s", one.owner.run_id, e)
        if self._uploader is not None:
            try:
                self.upload = self._uploader.stop(drain_timeout_s=self.settings.upload_timeout_s)
                self._report_upload(self.upload)
            except Exception as e:
                self._log.error("the final upload failed: %s", e)
            self._uploader.close()
            self._uploader = None
        for store in self._upload_stores or ():
            store.close()
        self._upload_stores = None
        if self._node_backend is not None:
            self._close(self._node_backend)
            self._node_backend = None
        if self._close_lister is not None:
            try:
                self._close_lister()
            except Exception as e:
                self._log.warning("closing the PodResources client failed: %s", e)
        return self.totals

    def abort_upload(self) -> None:
        """Cut the final upload short (safe in a signal handler: it only sets a flag)."""
        uploader = self._uploader
        if uploader is not None:
            uploader.abort_drain()

    def _report_upload(self, result: PushResult) -> None:
        if result.complete:
            self._log.info(
                "uploaded: %d chunks stored, %d duplicates", result.stored, result.duplicates
            )
            return
        self._log.warning(
            "%d chunk(s) and %d message(s) not uploaded (%s); they are safe in %s: run "
            "`thermoledger push` later",
            result.remaining + result.refused,
            result.messages_pending,
            result.error or "; ".join(result.blocked) or "refused by the service",
            self.settings.spool_dir,
        )
