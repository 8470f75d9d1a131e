"""Which devices a total may add: overlapping power domains are shown, never summed twice.

A node's domains can nest. RAPL's ``psys`` zone contains the packages (the meter never reads it);
a GH200-class module's counter includes its Grace CPU, so on such a host the CPU packages are
already inside the GPU figure. The rule is generic: a device may **declare the kinds it covers**
on its host (``covers``, e.g. ``("cpu",)``; `meters.backends.base.DeviceInfo.covers`, sent on
the wire as ``DevicePayload.covers`` and stored per device). Then every other device of a
covered kind on the same host is **covered**: listed with its own figures, and left out of the
per-host, per-kind and run totals, which add each joule once.

The rule works per host and per kind, not per socket: where only some of a host's modules were
metered, the host's CPU packages are all left out (a total may then fall short; it never counts
a joule twice). A device covering its own kind is refused where it is described; chains (A
covers cpu, a cpu device covers dram) are not followed, which can only leave energy out.

Kinds are the wire's: ``gpu``, ``cpu``, ``dram``, ``other`` (`KINDS`, in report order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["KINDS", "covered_by", "kind_order"]

KINDS = ("gpu", "cpu", "dram", "other")
"""Device kinds, in the order reports list them."""


def kind_order(kind: str) -> int:
    """Sort key of a kind: ``gpu`` < ``cpu`` < ``dram`` < ``other`` < anything unknown."""
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def covered_by(
    hosts: Sequence[str], kinds: Sequence[str], covers: Sequence[Iterable[str]]
) -> list[int | None]:
    """Per device, the position of a device on its host whose figures include it, or None.

    Args:
        hosts: Per device, its host.
        kinds: Per device, its kind (``gpu``, ``cpu``, ``dram``, ``other``).
        covers: Per device, the kinds on its host it covers (usually empty).

    Returns:
        Per device, None when a total counts it, else the position of the first device on the
        same host that declares its kind covered (never itself).

    Raises:
        ValueError: The sequences differ in length.
    """
    if not len(hosts) == len(kinds) == len(covers):
        raise ValueError("hosts, kinds and covers must have one entry per device")
    declared: dict[tuple[str, str], int] = {}
    for position, (host, kind, covered) in enumerate(zip(hosts, kinds, covers, strict=True)):
        for other in covered:
            if other != kind:
                declared.setdefault((host, other), position)
    out: list[int | None] = []
    for position, (host, kind) in enumerate(zip(hosts, kinds, strict=True)):
        by = declared.get((host, kind))
        out.append(None if by is None or by == position else by)
    return out
