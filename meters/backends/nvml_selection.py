"""Which GPUs an `NvmlBackend` meters: an explicit list, else ``CUDA_VISIBLE_DEVICES``, else all.

An explicit ``gpus=[...]`` holds NVML indices or UUIDs / UUID prefixes; an entry that names no GPU
raises. ``CUDA_VISIBLE_DEVICES`` (from the backend's ``env`` mapping) is read with CUDA's own
rules: indices, ``GPU-<uuid>`` or a unique prefix, ``MIG-<uuid>`` and the older
``MIG-GPU-<uuid>/<gi>/<ci>``; the list stops at the first entry that names no GPU, as CUDA does
(`Selection.ignored` says so). Integer entries count the GPUs this process can open, in NVML order,
as CUDA counts the devices it can open: under a device cgroup (Slurm, containers) NVML lists every
GPU of the node but refuses a handle to the others (NO_PERMISSION), and CUDA's device 0 is the first
GPU the process may use. That matches CUDA's own order only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
or on a node of identical GPUs.

A GPU the process may not open is not metered (it is not this process's to meter) and not
silently dropped either: `Selection.unopened` says which and why. An explicit ``gpus`` entry
naming one raises. A MIG entry selects its
parent GPU, flagged ``mig``: NVML reports power and energy for the whole GPU, shared by all its
instances. A GPU named twice (two MIG instances of one GPU) is metered once, so nothing is counted
twice.

Pure functions over what the backend enumerated; the one NVML question a MIG UUID needs (its
parent GPU) is asked through the callable the backend passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import DeviceUnavailable, MeterError
from .nvml_api import NvmlHandle


@dataclass(frozen=True, slots=True)
class Selection:
    """Which GPUs the backend meters, and why.

    Attributes:
        source: ``"gpus"`` (explicit argument), ``"CUDA_VISIBLE_DEVICES"`` or ``"all"``.
        indices: NVML indices, in the order of `NvmlBackend.devices`.
        via_mig: The indices that were named through a MIG entry.
        ignored: Entries that selected nothing, each with the reason.
        unopened: The GPUs NVML lists but this process may not open, each as ``"GPU <NVML
            index>: <why>"`` (not metered).
    """

    source: Literal["gpus", "CUDA_VISIBLE_DEVICES", "all"]
    indices: tuple[int, ...]
    via_mig: frozenset[int] = frozenset()
    ignored: tuple[str, ...] = ()
    unopened: tuple[str, ...] = ()


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


class _Unmatched(Exception):
    """An entry that names no GPU (internal: becomes DeviceUnavailable or an ignored entry)."""


def select(
    enumerated: Sequence[Enumerated],
    gpus: Sequence[int | str] | None,
    env: Mapping[str, str],
    mig_parent_uuid: Callable[[str], str],
) -> Selection:
    """The GPUs to meter, from ``gpus``, else ``CUDA_VISIBLE_DEVICES`` in ``env``, else all.

    Args:
        enumerated: Every GPU NVML lists, by NVML index.
        gpus: The explicit selection (module docstring), or None.
        env: The environment to take ``CUDA_VISIBLE_DEVICES`` from.
        mig_parent_uuid: The UUID of the GPU hosting a MIG device, by the MIG device's UUID
            (`NvmlBackend.mig_parent_uuid`; raises `MeterError` for an unknown one).

    Raises:
        DeviceUnavailable: An entry of ``gpus`` names no GPU.
    """
    unopened = tuple(f"GPU {e.index}: {e.error}" for e in enumerated if e.refused)
    if gpus is not None:
        entries: list[int | str] = list(gpus)
        source: Literal["gpus", "CUDA_VISIBLE_DEVICES", "all"] = "gpus"
    elif "CUDA_VISIBLE_DEVICES" in env:
        raw = env["CUDA_VISIBLE_DEVICES"].strip()
        entries = [part.strip() for part in raw.split(",")] if raw else []
        source = "CUDA_VISIBLE_DEVICES"
    else:
        metered = tuple(entry.index for entry in enumerated if not entry.refused)
        return Selection("all", metered, unopened=unopened)

    indices: list[int] = []
    via_mig: set[int] = set()
    ignored: list[str] = []
    for position, entry in enumerate(entries):
        try:
            index, mig = _resolve(enumerated, entry, mig_parent_uuid, by_ordinal=source != "gpus")
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
        indices.append(index)
    return Selection(source, tuple(indices), frozenset(via_mig), tuple(ignored), unopened)


def _resolve(
    enumerated: Sequence[Enumerated],
    entry: int | str,
    mig_parent_uuid: Callable[[str], str],
    *,
    by_ordinal: bool,
) -> tuple[int, bool]:
    """NVML index named by one selection entry, and whether it was named through MIG.

    ``by_ordinal``: an integer counts the GPUs this process can open (CUDA's way), else it is
    the NVML index (an explicit ``gpus`` entry).
    """
    text = str(entry).strip()
    if isinstance(entry, int) or text.isdigit():
        number = int(text)
        if by_ordinal:
            opened = [e.index for e in enumerated if e.uuid is not None]
            if number >= len(opened):
                raise _Unmatched(
                    f"no GPU with index {number} ({len(opened)} this process can open, "
                    f"of {len(enumerated)} present)"
                )
            return opened[number], False
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
