"""Which GPUs an `NvmlBackend` meters, by the first rule that applies, and why.

1. **An explicit** ``gpus=[...]`` (``--gpus``) always wins: NVML indices or UUIDs / UUID
   prefixes; an entry that names no GPU raises.
2. **Slurm's GPUs for this node**: ``SLURM_STEP_GPUS``, else ``SLURM_JOB_GPUS`` (the step's GPUs
   first: two steps sharing a node each meter their own). They list GPU ids, comma-separated,
   ranges allowed (``"0-3,5"``), which are device minor numbers (``/dev/nvidia<N>``), matched
   against ``nvmlDeviceGetMinorNumber``. The node meter (local rank 0: `meters.runid.elect`)
   meters every GPU of the job on the node whatever its own ``CUDA_VISIBLE_DEVICES`` says
   (launchers binding one GPU per task give rank 0 only its own). A listed GPU this process may
   not open (a per-task device cgroup) is named in `Selection.ignored`: meter such nodes from
   outside the tasks (``thermoledger run`` around ``srun``, or a sidecar). A variable that does
   not parse, or whose GPUs none can be opened, is skipped (said in ``ignored``).
3. **Several local ranks**: when a local rank is set (`meters.runid.LOCAL_RANK_VARS`) and the
   node holds more than one (`meters.runid.LOCAL_SIZE_VARS` > 1), and ``CUDA_VISIBLE_DEVICES``
   names fewer GPUs than the process can open, every GPU it can open is metered (its own
   first): each rank was given its own GPU, and the one meter of the node must cover them all.
4. ``CUDA_VISIBLE_DEVICES`` (from the backend's ``env`` mapping), with CUDA's own rules:
   integers, ``GPU-<uuid>`` or a unique prefix, ``MIG-<uuid>`` and the older
   ``MIG-GPU-<uuid>/<gi>/<ci>``; the list stops at the first entry that names no GPU, as CUDA
   does (`Selection.ignored` says so).
5. Else **every GPU** the process may open.

Integer ``CUDA_VISIBLE_DEVICES`` entries are CUDA ordinals, not NVML indices: CUDA counts only
the GPUs the process may open (under a device cgroup NVML lists every GPU of the node but refuses
a handle to the others), and orders them FASTEST_FIRST unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
Ordinal ``k`` (the entry at position ``k``) is read, in this order:

a. as the UUID CUDA itself gives device ``k`` (libcuda, `meters.backends.cuda_ordinals`), where
   the backend may ask it (the selection's environment is the process's own for
   ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER``); any failure falls through;
b. with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: the ``k``-th openable GPU by PCI bus id;
c. otherwise the ``k``-th openable GPU in NVML order, which is CUDA's on a node of identical
   GPUs (equivalent for metering). On a node of mixed models FASTEST_FIRST may differ: that is
   warned once, loudly, and noted on the GPUs so chosen (`Selection.warnings`).

A GPU the process may not open is not metered and not silently dropped either:
`Selection.unopened` says which and why; an explicit ``gpus`` entry naming one raises. A MIG
entry selects its parent GPU, flagged ``mig``: NVML reports power and energy for the whole GPU,
shared by all its instances. A GPU named twice (two MIG instances of one GPU) is metered once.

Pure functions over what the backend enumerated; what they must ask NVML or CUDA (a MIG device's
parent, minor numbers, PCI bus ids, names, CUDA's order) they ask through `Lookups`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..errors import DeviceUnavailable, MeterError
from ..runid import local_rank, local_size
from .nvml_api import NvmlHandle

Source = Literal[
    "gpus", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "local_ranks", "CUDA_VISIBLE_DEVICES", "all"
]
SLURM_GPU_VARS: tuple[Literal["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"], ...] = (
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
)
_OTHER_TASK_FIX = (
    "under a per-task device cgroup it is another task's GPU: meter the node from outside the "
    "tasks (`thermoledger run` around `srun`, or a sidecar)"
)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which GPUs the backend meters, and why.

    Attributes:
        source: The rule that chose them (module docstring): ``"gpus"`` (explicit),
            ``"SLURM_STEP_GPUS"`` / ``"SLURM_JOB_GPUS"``, ``"local_ranks"`` (every GPU the node
            meter can open, for several local ranks), ``"CUDA_VISIBLE_DEVICES"`` or ``"all"``.
        indices: NVML indices, in the order of `NvmlBackend.devices`.
        via_mig: The indices that were named through a MIG entry.
        ignored: Entries that selected nothing, and skipped rules, each with the reason.
        unopened: The GPUs NVML lists but this process may not open, each as ``"GPU <NVML
            index>: <why>"`` (not metered).
        rule: One sentence for people: the rule that applied and what it read.
        ordinals: How integer ``CUDA_VISIBLE_DEVICES`` entries were read ("" when none were).
        warnings: What the backend logs at WARNING (ordinals on a node of mixed models).
        by_ordinal: The indices chosen through an integer ``CUDA_VISIBLE_DEVICES`` entry.
    """

    source: Source
    indices: tuple[int, ...]
    via_mig: frozenset[int] = frozenset()
    ignored: tuple[str, ...] = ()
    unopened: tuple[str, ...] = ()
    rule: str = ""
    ordinals: str = ""
    warnings: tuple[str, ...] = ()
    by_ordinal: frozenset[int] = frozenset()


@dataclass(slots=True)
class Enumerated:
    """One GPU as NVML listed it while opening.

    Attributes:
        index: Its NVML index.
        handle: Its NVML handle (None: NVML gave none).
        uuid: Its UUID (None: it did not answer).
        error: Why it did not answer while opening ("" when it did).
        refused: NVML refused this process the GPU (NO_PERMISSION, a device cgroup): it is
            not this process's GPU, rather than one that stopped answering.
    """

    index: int
    handle: NvmlHandle = None
    uuid: str | None = None
    error: str = ""
    refused: bool = False


def _nothing(entry: Enumerated) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Lookups:
    """What the selection may have to ask NVML or CUDA; each answers None (or raises
    `MeterError`, for ``mig_parent_uuid``) where it cannot tell.

    Attributes:
        mig_parent_uuid: The UUID of the GPU hosting a MIG device, by the MIG device's UUID.
        minor_number: A GPU's minor number (``nvmlDeviceGetMinorNumber``).
        pci_bus_id: A GPU's PCI bus id (``nvmlPciInfo_t.busId``, ``"00000000:41:00.0"``).
        name: A GPU's name.
        cuda_uuids: The UUIDs of CUDA's devices in CUDA's order (`meters.backends.cuda_ordinals`;
            raises on failure), or None where CUDA may not be asked.
    """

    mig_parent_uuid: Callable[[str], str]
    minor_number: Callable[[Enumerated], int | None] = _nothing
    pci_bus_id: Callable[[Enumerated], str | None] = _nothing
    name: Callable[[Enumerated], str | None] = _nothing
    cuda_uuids: Callable[[], Sequence[str]] | None = None


class _Unmatched(Exception):
    """An entry that names no GPU (internal: becomes DeviceUnavailable or an ignored entry)."""


def parse_gpu_ids(text: str) -> list[int]:
    """Slurm's GPU id list: ``"0-3,5"`` -> ``[0, 1, 2, 3, 5]`` (order kept, repeats dropped).

    Raises:
        ValueError: Not a comma-separated list of non-negative integers and ranges.
    """
    ids: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part.strip()!r} is neither a GPU id nor a range")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"the range {part.strip()!r} runs backwards")
        ids.extend(i for i in range(low, high + 1) if i not in ids)
    return ids


def select(
    enumerated: Sequence[Enumerated],
    gpus: Sequence[int | str] | None,
    env: Mapping[str, str],
    lookups: Lookups,
) -> Selection:
    """The GPUs to meter, by the first rule of the module docstring that applies.

    Args:
        enumerated: Every GPU NVML lists, by NVML index.
        gpus: The explicit selection (module docstring), or None.
        env: The environment to take Slurm's, the launcher's and CUDA's variables from.
        lookups: What may be asked of NVML and CUDA on the way.

    Raises:
        DeviceUnavailable: An entry of ``gpus`` names no GPU.
    """
    unopened = tuple(f"GPU {e.index}: {e.error}" for e in enumerated if e.refused)
    if gpus is not None:
        return _listed(enumerated, list(gpus), "gpus", env, lookups, unopened, [])
    skipped: list[str] = []
    for var in SLURM_GPU_VARS:
        raw = env.get(var, "").strip()
        if raw:
            chosen = _slurm(enumerated, var, raw, lookups, unopened, skipped)
            if chosen is not None:
                return chosen
    if "CUDA_VISIBLE_DEVICES" in env:
        raw = env["CUDA_VISIBLE_DEVICES"].strip()
        entries: list[int | str] = [part.strip() for part in raw.split(",")] if raw else []
        listed = _listed(
            enumerated, entries, "CUDA_VISIBLE_DEVICES", env, lookups, unopened, skipped
        )
        return _widened(enumerated, listed, env, raw)
    metered = tuple(e.index for e in enumerated if not e.refused)
    rule = "every GPU this process may open (no gpus, no Slurm GPUs, no CUDA_VISIBLE_DEVICES)"
    return Selection("all", metered, ignored=tuple(skipped), unopened=unopened, rule=rule)


def _slurm(
    enumerated: Sequence[Enumerated],
    var: Literal["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"],
    raw: str,
    lookups: Lookups,
    unopened: tuple[str, ...],
    skipped: list[str],
) -> Selection | None:
    """Slurm's GPU ids mapped to NVML indices by minor number; None (said in ``skipped``)."""
    try:
        ids = parse_gpu_ids(raw)
    except ValueError as e:
        skipped.append(f"{var}={raw!r}: not a list of GPU ids ({e}); not used")
        return None
    by_minor: dict[int, int] = {}
    for entry in enumerated:
        if entry.uuid is not None:
            minor = lookups.minor_number(entry)
            if minor is not None:
                by_minor.setdefault(minor, entry.index)
    indices = [by_minor[i] for i in ids if i in by_minor]
    missing = [i for i in ids if i not in by_minor]
    if not indices:
        skipped.append(
            f"{var}={raw}: no GPU this process can open has minor number(s) "
            f"{', '.join(map(str, missing))}; not used"
        )
        return None
    ignored = [*skipped]
    ignored.extend(
        f"{var} GPU {i}: no GPU this process can open has this minor number ({_OTHER_TASK_FIX})"
        for i in missing
    )
    rule = (
        f"{var}={raw}: the job's GPUs on this node, by minor number (the node meter meters "
        "them all, whatever its own CUDA_VISIBLE_DEVICES)"
    )
    return Selection(var, tuple(indices), ignored=tuple(ignored), unopened=unopened, rule=rule)


def _widened(
    enumerated: Sequence[Enumerated], listed: Selection, env: Mapping[str, str], raw: str
) -> Selection:
    """Every GPU the process may open, where several local ranks each got their own."""
    rank, rank_var = local_rank(env)
    size, size_var = local_size(env)
    openable = [e.index for e in enumerated if not e.refused]
    if rank is None or size is None or size <= 1 or len(listed.indices) >= len(openable):
        return listed
    indices = (*listed.indices, *(i for i in openable if i not in listed.indices))
    rule = (
        f"{rank_var}={rank} of {size_var}={size} local ranks, and CUDA_VISIBLE_DEVICES={raw!r} "
        f"names {len(listed.indices)} of the {len(openable)} GPUs this process can open: each "
        "rank has its own GPU(s), so the node meter (local rank 0) meters every GPU it can open"
    )
    return Selection(
        "local_ranks",
        indices,
        listed.via_mig,
        listed.ignored,
        listed.unopened,
        rule,
        listed.ordinals,
        listed.warnings,
        listed.by_ordinal,
    )


def _listed(
    enumerated: Sequence[Enumerated],
    entries: list[int | str],
    source: Literal["gpus", "CUDA_VISIBLE_DEVICES"],
    env: Mapping[str, str],
    lookups: Lookups,
    unopened: tuple[str, ...],
    skipped: list[str],
) -> Selection:
    """An explicit ``gpus`` list (NVML indices) or ``CUDA_VISIBLE_DEVICES`` (CUDA ordinals)."""
    ordinals = _Ordinals(enumerated, env, lookups) if source != "gpus" else None
    indices: list[int] = []
    via_mig: set[int] = set()
    by_ordinal: set[int] = set()
    ignored: list[str] = [*skipped]
    for position, entry in enumerate(entries):
        try:
            index, mig = _resolve(enumerated, entry, lookups.mig_parent_uuid, position, ordinals)
        except _Unmatched as e:
            if source == "gpus":
                raise DeviceUnavailable(f"gpus entry {entry!r}: {e}") from None
            # CUDA hides this entry and every one after it; so does the meter, and says so.
            rest = ", ".join(repr(str(x)) for x in entries[position:])
            ignored.append(f"{rest}: {e} (CUDA stops at the first invalid entry)")
            break
        if mig:
            via_mig.add(index)
        if index in indices:
            ignored.append(f"{entry!r}: GPU {index} is already selected (metered once)")
            continue
        if ordinals is not None and str(entry).isdigit():
            by_ordinal.add(index)
        indices.append(index)
    if source == "gpus":
        rule = "the GPUs asked for (gpus / --gpus): an explicit list always wins"
    else:
        rule = f"CUDA_VISIBLE_DEVICES={','.join(map(str, entries))!r}"
    said = ordinals.said if ordinals is not None else ""
    warnings = tuple(ordinals.warnings) if ordinals is not None else ()
    if said:
        rule += f"; integer entries {said}"
    return Selection(
        source,
        tuple(indices),
        frozenset(via_mig),
        tuple(ignored),
        unopened,
        rule,
        said,
        warnings,
        frozenset(by_ordinal),
    )


@dataclass(slots=True)
class _Ordinals:
    """How integer ``CUDA_VISIBLE_DEVICES`` entries name GPUs (module docstring: a, b, c).

    Asked lazily: neither CUDA nor NVML is asked anything unless an integer entry is read.
    """

    enumerated: Sequence[Enumerated]
    env: Mapping[str, str]
    lookups: Lookups
    said: str = ""
    warnings: list[str] = field(default_factory=list)
    _cuda: Sequence[str] | None = None
    _cuda_asked: bool = False
    _order: list[int] | None = None
    _notes: list[str] = field(default_factory=list)

    def gpu(self, position: int, number: int) -> int:
        """The NVML index of the GPU that CUDA ordinal ``number``, at ``position``, names."""
        cuda = self._cuda_order()
        if cuda is not None and position < len(cuda):
            try:
                index = _by_uuid_prefix(self.enumerated, cuda[position])
            except _Unmatched as e:
                self._note(f"libcuda's device {position} ({cuda[position]}): {e}")
            else:
                self._say("by libcuda (CUDA's own order)")
                return index
        order = self._fallback_order()
        if number >= len(order):
            raise _Unmatched(
                f"no GPU with index {number} ({len(order)} this process can open, "
                f"of {len(self.enumerated)} present)"
            )
        return order[number]

    def _say(self, how: str) -> None:
        notes = f" ({'; '.join(self._notes)})" if self._notes else ""
        self.said = f"{how}{notes}"

    def _note(self, note: str) -> None:
        if note not in self._notes:
            self._notes.append(note)

    def _cuda_order(self) -> Sequence[str] | None:
        if not self._cuda_asked:
            self._cuda_asked = True
            if self.lookups.cuda_uuids is not None:
                try:
                    self._cuda = list(self.lookups.cuda_uuids())
                except Exception as e:  # never fatal: the other rules follow
                    self._note(f"libcuda did not say CUDA's order: {e}")
        return self._cuda

    def _fallback_order(self) -> list[int]:
        """The openable GPUs by PCI bus id (``CUDA_DEVICE_ORDER=PCI_BUS_ID``), else NVML's."""
        if self._order is not None:
            return self._order
        opened = [e for e in self.enumerated if e.uuid is not None]
        order = [e.index for e in opened]
        if self.env.get("CUDA_DEVICE_ORDER", "").strip().upper() == "PCI_BUS_ID":
            keys = [_bus_key(self.lookups.pci_bus_id(e)) for e in opened]
            if all(key is not None for key in keys):
                order = [e.index for _, e in sorted(zip(keys, opened, strict=True))]
                self._say("by PCI bus id (CUDA_DEVICE_ORDER=PCI_BUS_ID)")
            else:
                self._note("a GPU gave no PCI bus id")
                self._say("in NVML order (CUDA_DEVICE_ORDER=PCI_BUS_ID, but no bus ids)")
        else:
            names = sorted({self.lookups.name(e) or "?" for e in opened})
            if len(names) > 1:
                warning = (
                    f"integer CUDA_VISIBLE_DEVICES entries on a node of mixed GPU models "
                    f"({', '.join(names)}): CUDA orders devices FASTEST_FIRST, NVML by its own "
                    "index, so CUDA's device k may not be the GPU metered as k. Set "
                    "CUDA_DEVICE_ORDER=PCI_BUS_ID or name the GPUs by UUID"
                )
                self.warnings.append(warning)
                self._say("in NVML order, which may not be CUDA's on this node of mixed models")
            else:
                self._say("in NVML order (identical GPU models: equivalent for metering)")
        self._order = order
        return order


def _bus_key(bus_id: str | None) -> tuple[int, ...] | None:
    """``"00000000:41:00.0"`` -> ``(0, 0x41, 0, 0)``, to sort as the PCI bus does; None: none."""
    if not bus_id:
        return None
    try:
        return tuple(int(part, 16) for part in bus_id.replace(".", ":").split(":"))
    except ValueError:
        return None


def _resolve(
    enumerated: Sequence[Enumerated],
    entry: int | str,
    mig_parent_uuid: Callable[[str], str],
    position: int,
    ordinals: _Ordinals | None,
) -> tuple[int, bool]:
    """NVML index named by one selection entry, and whether it was named through MIG.

    ``ordinals``: an integer is a CUDA ordinal read by it (``CUDA_VISIBLE_DEVICES``); None: the
    NVML index (an explicit ``gpus`` entry).
    """
    text = str(entry).strip()
    if isinstance(entry, int) or text.isdigit():
        number = int(text)
        if ordinals is not None:
            return ordinals.gpu(position, number), False
        if number >= len(enumerated):
            raise _Unmatched(f"no GPU with index {number} ({len(enumerated)} present)")
        if enumerated[number].refused:
            raise _Unmatched(
                f"GPU {number} may not be opened by this process ({enumerated[number].error})"
            )
        return number, False
    if text.startswith("MIG-GPU-"):
        # R450-R465 syntax MIG-GPU-<parent uuid>/<gpu instance>/<compute instance>
        return _by_uuid_prefix(enumerated, text[len("MIG-") :].split("/")[0]), True
    if text.startswith("MIG-"):
        try:
            parent_uuid = mig_parent_uuid(text)
        except MeterError as e:
            raise _Unmatched(f"no MIG device {text} ({e})") from None
        return _by_uuid_prefix(enumerated, parent_uuid), True
    if text.startswith("GPU-"):
        return _by_uuid_prefix(enumerated, text), False
    raise _Unmatched("neither an index nor a GPU-/MIG- UUID")


def _by_uuid_prefix(enumerated: Sequence[Enumerated], prefix: str) -> int:
    wanted = prefix.lower()
    matches = [e.index for e in enumerated if e.uuid and e.uuid.lower().startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise _Unmatched(f"no GPU has a UUID starting with {prefix}")
    raise _Unmatched(f"UUID prefix {prefix} is ambiguous (GPUs {matches})")
