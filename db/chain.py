"""The ledger's hash chain, as pure functions: canonical content, entry hashes, verification.

No database here (nothing imports SQLAlchemy), so the chain can be unit-tested on plain
values, and an auditor can recompute every hash from an export with this module alone.

The chain
---------
Each project's ledger is a sequence of entries numbered ``seq`` = 1, 2, 3, … Each entry stores
``prev_hash`` (the previous entry's ``hash``; 64 zeros for seq 1) and

    hash = SHA-256( prev_hash ‖ canonical(entry) )            (hex, UTF-8 text)

where ``canonical`` is the JSON of the entry's fields with sorted keys and no whitespace:
``seq``, ``project`` (the slug), ``run`` (UUID text or null), ``kind``, ``value_si``,
``unit_si``, ``value_given``, ``unit_given``, ``source``, ``provenance`` and ``created_at``
(ISO 8601, UTC, microseconds). A change to any field, to the order, or to a link changes a hash.

Numbers are hashed as IEEE doubles (`canonical_number`): an integral value within ±2⁵³ is
written as an integer, anything else as Python's shortest round-trip ``repr``. PostgreSQL's
JSONB reads ``1e20`` back as the integer ``100000000000000000000`` and ``3.0`` as ``3.0``;
both forms hash the same, so a chain verifies identically on SQLite and PostgreSQL.

Verification (`verify_chain`) names every broken entry and what is wrong with it:

* ``modified`` — its stored hash does not match its content (a value, unit, provenance… was
  changed after it was written);
* ``reordered`` — its content hashes correctly only under another entry's seq (seqs swapped);
* ``deleted`` — a seq is missing from 1 … head, or the chain ends before the recorded head;
* ``inserted`` — an entry the chain does not link to: a duplicate seq, an entry beyond the
  recorded head, or an entry the next one skips over;
* ``link_broken`` — its ``prev_hash`` is not the hash of any entry before it;
* ``head_mismatch`` — the recorded head (last seq and hash, kept beside the chain) disagrees
  with the chain's last entry.

A hash chain without a secret cannot stop someone who rewrites *every* later entry and the head
consistently; the head hash that `verify_chain` returns is the anchor against that: publish it
(the auditor's export carries it), and a later verification with ``anchors`` proves the entries
up to it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

__all__ = [
    "GENESIS_HASH",
    "ChainHead",
    "ChainProblem",
    "ChainVerdict",
    "EntryContent",
    "ProblemKind",
    "StoredEntry",
    "canonical_json",
    "canonical_number",
    "canonical_value",
    "entry_hash",
    "iso_utc",
    "verify_chain",
]

#: ``prev_hash`` of a project's first entry.
GENESIS_HASH = "0" * 64

_EXACT_INT = 2**53

ProblemKind = Literal[
    "modified", "reordered", "deleted", "inserted", "link_broken", "head_mismatch", "anchor"
]


def iso_utc(when: datetime) -> str:
    """``when`` as ISO 8601 in UTC with microseconds: ``2026-03-01T12:00:00.000000+00:00``.

    Raises:
        ValueError: A naive datetime (its zone would be a guess).
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()} refused: give it a time zone")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_number(value: float) -> int | float:
    """A number as it is hashed: an exact integer when integral and within ±2⁵³, else a float.

    Raises:
        ValueError: NaN or ±inf (JSON has no such numbers; the ledger refuses them).
    """
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    if number.is_integer() and abs(number) <= _EXACT_INT:
        return int(number)
    return number


def canonical_value(value: Any) -> Any:
    """A JSON document with every number made canonical (see `canonical_number`).

    Raises:
        TypeError: A value JSON cannot hold, or a non-string key.
        ValueError: A non-finite number.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return canonical_number(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"provenance keys must be strings, got {key!r}")
            out[key] = canonical_value(item)
        return out
    if isinstance(value, list | tuple):
        return [canonical_value(item) for item in value]
    raise TypeError(f"{type(value).__name__} cannot be stored in the ledger: {value!r}")


@dataclass(frozen=True, slots=True)
class EntryContent:
    """What an entry's hash covers (everything but its own ``hash`` and ``prev_hash``).

    Attributes:
        seq: Position in the project's chain, from 1.
        project: The project's slug.
        run: The run the figure belongs to, if any.
        kind: ``energy``, ``compute``, ``tokens``, ``cost`` or ``carbon``.
        value_si: The value in ``unit_si``.
        unit_si: The dimension's reference unit (``J``, ``gCO2e``, ``USD``, ``token``, ``FLOP``).
        value_given: The value as posted.
        unit_given: The unit as posted.
        source: ``measured``, ``declared`` or ``derived``.
        provenance: Where the figure comes from (JSON object).
        created_at: When it was appended (aware).
    """

    seq: int
    project: str
    run: UUID | None
    kind: str
    value_si: float
    unit_si: str
    value_given: float
    unit_given: str
    source: str
    provenance: Mapping[str, Any]
    created_at: datetime

    def as_document(self) -> dict[str, Any]:
        """The canonical document (before serialisation)."""
        return {
            "seq": int(self.seq),
            "project": self.project,
            "run": None if self.run is None else str(self.run),
            "kind": self.kind,
            "value_si": canonical_number(self.value_si),
            "unit_si": self.unit_si,
            "value_given": canonical_number(self.value_given),
            "unit_given": self.unit_given,
            "source": self.source,
            "provenance": canonical_value(self.provenance),
            "created_at": iso_utc(self.created_at),
        }


def canonical_json(content: EntryContent) -> str:
    """Sorted-key, whitespace-free JSON of the entry's content (UTF-8, no ASCII escaping)."""
    return json.dumps(
        content.as_document(),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def entry_hash(prev_hash: str, content: EntryContent) -> str:
    """SHA-256 (hex) of ``prev_hash`` followed by the canonical JSON of ``content``."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(canonical_json(content).encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as read back: its row id, content, and the two stored hashes."""

    id: int
    content: EntryContent
    prev_hash: str
    hash: str

    @property
    def seq(self) -> int:
        """The entry's seq."""
        return self.content.seq


@dataclass(frozen=True, slots=True)
class ChainHead:
    """What the database records beside the chain: the last seq appended and its hash."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One broken entry (or a missing one), named.

    Attributes:
        kind: What is wrong (see the module docstring).
        seq: The seq concerned (the missing seq for ``deleted``).
        entry_id: The row id, or None when the entry is missing.
        message: A sentence for the reader.
    """

    kind: ProblemKind
    seq: int
    entry_id: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"kind": self.kind, "seq": self.seq, "id": self.entry_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """The result of verifying one project's chain.

    Attributes:
        entries: Entries read.
        head_seq: Seq of the chain's last entry (0 for an empty chain).
        head_hash: Its hash (`GENESIS_HASH` for an empty chain): publish it as an anchor.
        problems: Every broken entry, in seq order.
    """

    entries: int
    head_seq: int
    head_hash: str
    problems: tuple[ChainProblem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "problems": [p.to_dict() for p in self.problems],
        }


def _rehash(entry: StoredEntry, seq: int) -> str:
    content = entry.content
    moved = EntryContent(
        seq=seq,
        project=content.project,
        run=content.run,
        kind=content.kind,
        value_si=content.value_si,
        unit_si=content.unit_si,
        value_given=content.value_given,
        unit_given=content.unit_given,
        source=content.source,
        provenance=content.provenance,
        created_at=content.created_at,
    )
    return entry_hash(entry.prev_hash, moved)


def _safe_hash(entry: StoredEntry, seq: int) -> str | None:
    try:
        return _rehash(entry, seq)
    except (TypeError, ValueError, AttributeError):  # not even canonicalisable: modified
        return None


#: Beyond this many mismatched entries, reordering is not searched for (it costs m × m hashes).
_MAX_REORDER_SEARCH = 200


def _content_problems(
    mismatched: Sequence[StoredEntry], missing: Sequence[int]
) -> list[ChainProblem]:
    """``modified`` or, when the content hashes under a neighbouring seq, ``reordered``."""
    candidates: set[int] = set(missing)
    for entry in mismatched:
        candidates.update((entry.seq - 1, entry.seq, entry.seq + 1))
    search = sorted(s for s in candidates if s >= 1)
    problems: list[ChainProblem] = []
    for entry in mismatched:
        moved_from = None
        if len(mismatched) <= _MAX_REORDER_SEARCH:
            moved_from = next(
                (s for s in search if s != entry.seq and _safe_hash(entry, s) == entry.hash),
                None,
            )
        if moved_from is not None:
            problems.append(
                ChainProblem(
                    "reordered",
                    entry.seq,
                    entry.id,
                    f"entry id {entry.id} sits at seq {entry.seq} but was written as seq "
                    f"{moved_from}",
                )
            )
        else:
            problems.append(
                ChainProblem(
                    "modified",
                    entry.seq,
                    entry.id,
                    f"entry id {entry.id} at seq {entry.seq}: its content no longer matches its "
                    "hash (a field was changed after it was written)",
                )
            )
    return problems


def _duplicates(ordered: Sequence[StoredEntry]) -> dict[int, ChainProblem]:
    """Entries that share a seq with another: the one the chain does not lead through intrudes.

    Returns:
        ``{intruder id: problem}``.
    """
    by_hash: dict[str, StoredEntry] = {}
    for entry in ordered:
        by_hash.setdefault(entry.hash, entry)
    linked = {by_hash[e.prev_hash].id for e in ordered if e.prev_hash in by_hash}
    first_of: dict[int, StoredEntry] = {}
    found: dict[int, ChainProblem] = {}
    for entry in ordered:
        first = first_of.setdefault(entry.seq, entry)
        if first is entry:
            continue
        entry_is_intruder = entry.id not in linked or first.id in linked
        intruder, genuine = (entry, first) if entry_is_intruder else (first, entry)
        if not entry_is_intruder:
            first_of[entry.seq] = entry
        found[intruder.id] = ChainProblem(
            "inserted",
            entry.seq,
            intruder.id,
            f"entry id {intruder.id} duplicates seq {entry.seq} (held by entry id {genuine.id})",
        )
    return found


def _link_problems(chain: Sequence[StoredEntry], mismatched_ids: set[int]) -> list[ChainProblem]:
    """Each entry's ``prev_hash`` against the hash of the entry before it (where there is one)."""
    by_hash = {e.hash: e for e in reversed(chain)}
    problems: list[ChainProblem] = []
    for i, entry in enumerate(chain):
        previous = chain[i - 1] if i > 0 else None
        if entry.seq == 1:
            expected = GENESIS_HASH
        elif previous is not None and previous.seq == entry.seq - 1:
            expected = previous.hash
        else:
            continue  # after a gap: the missing entry is reported as deleted
        if entry.prev_hash == expected:
            continue
        target = by_hash.get(entry.prev_hash)
        if target is not None and target.seq < entry.seq - 1:
            problems.extend(
                ChainProblem(
                    "inserted",
                    e.seq,
                    e.id,
                    f"entry id {e.id} at seq {e.seq} is not part of the chain: seq {entry.seq} "
                    f"links to seq {target.seq}, skipping it",
                )
                for e in chain
                if target.seq < e.seq < entry.seq and e.id not in mismatched_ids
            )
        elif entry.id not in mismatched_ids and (
            previous is None or previous.id not in mismatched_ids
        ):
            before = f"seq {previous.seq} (id {previous.id})" if previous else "the chain's start"
            problems.append(
                ChainProblem(
                    "link_broken",
                    entry.seq,
                    entry.id,
                    f"entry id {entry.id} at seq {entry.seq} does not link to {before}: its "
                    "prev_hash is not that entry's hash (one of the two was rewritten with a "
                    "recomputed hash)",
                )
            )
    return problems


def verify_chain(
    entries: Sequence[StoredEntry],
    *,
    head: ChainHead | None = None,
    anchors: Mapping[int, str] | None = None,
) -> ChainVerdict:
    """Check one project's chain and name every broken entry.

    Args:
        entries: The project's entries, in any order.
        head: The head recorded beside the chain (None: not checked; e.g. an export).
        anchors: ``{seq: hash}`` published earlier; each must still be in the chain unchanged.

    Returns:
        The verdict, with problems in seq order.
    """
    ordered = sorted(entries, key=lambda e: (e.seq, e.id))
    problems: list[ChainProblem] = []

    # 1. Content: each entry's stored hash must be the hash of what it holds now.
    mismatched = [e for e in ordered if _safe_hash(e, e.seq) != e.hash]
    mismatched_ids = {e.id for e in mismatched}
    present_seqs = {e.seq for e in ordered}
    last_seq = max(present_seqs, default=0)
    top = max(last_seq, head.seq if head is not None else 0)
    missing = [s for s in range(1, top + 1) if s not in present_seqs]
    problems.extend(_content_problems(mismatched, missing))

    # 2. Numbering: 1 … top, each once.
    problems.extend(
        ChainProblem(
            "deleted",
            s,
            None,
            f"seq {s} is missing"
            + (
                f" (the recorded head is seq {head.seq})"
                if head is not None and s > last_seq
                else ""
            ),
        )
        for s in missing
    )
    intruders = _duplicates(ordered)
    problems.extend(intruders.values())

    # 3. Links: each prev_hash must be the hash of the entry before it.
    chain = [e for e in ordered if e.id not in intruders]
    problems.extend(_link_problems(chain, mismatched_ids))

    # 4. The head recorded beside the chain.
    last = chain[-1] if chain else None
    head_seq = last.seq if last is not None else 0
    head_hash = last.hash if last is not None else GENESIS_HASH
    if head is not None and (head.seq, head.hash) != (head_seq, head_hash):
        if head.seq < head_seq:
            problems.extend(
                ChainProblem(
                    "inserted",
                    e.seq,
                    e.id,
                    f"entry id {e.id} at seq {e.seq} lies beyond the recorded head "
                    f"(seq {head.seq})",
                )
                for e in ordered
                if e.seq > head.seq
            )
        elif head.seq == head_seq:
            problems.append(
                ChainProblem(
                    "head_mismatch",
                    head.seq,
                    last.id if last is not None else None,
                    f"the recorded head hash for seq {head.seq} is not the hash of the chain's "
                    "last entry",
                )
            )
    for seq, expected_hash in sorted((anchors or {}).items()):
        holders = [e for e in ordered if e.seq == seq]
        if not any(e.hash == expected_hash for e in holders):
            problems.append(
                ChainProblem(
                    "anchor",
                    seq,
                    holders[0].id if holders else None,
                    f"the anchor for seq {seq} ({expected_hash[:12]}…) is not in the chain: "
                    "history up to it was rewritten",
                )
            )

    order = {"deleted": 0}
    problems.sort(key=lambda p: (p.seq, order.get(p.kind, 1), p.entry_id or 0))
    return ChainVerdict(
        entries=len(ordered), head_seq=head_seq, head_hash=head_hash, problems=tuple(problems)
    )
