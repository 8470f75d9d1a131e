"""The hash chain as pure functions (`db.chain`): every kind of tampering is found and named."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from thermoledger.db.chain import (
    GENESIS_HASH,
    ChainHead,
    EntryContent,
    StoredEntry,
    canonical_json,
    canonical_number,
    entry_hash,
    iso_utc,
    verify_chain,
)

RUN = UUID("00000000-0000-0000-0000-000000000001")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def content(seq: int, value: float = 1000.0, **changes: object) -> EntryContent:
    base = EntryContent(
        seq=seq,
        project="lab",
        run=RUN,
        kind="energy",
        value_si=value * seq,
        unit_si="J",
        value_given=value * seq,
        unit_given="J",
        source="measured",
        provenance={"figure": "it_energy", "measurement": {"methods": {"counter": 1}}},
        created_at=T0 + timedelta(seconds=seq),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def chain(n: int) -> list[StoredEntry]:
    """``n`` entries as the service writes them (ids 101, 102, …)."""
    entries, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        c = content(seq)
        digest = entry_hash(prev, c)
        entries.append(StoredEntry(id=100 + seq, content=c, prev_hash=prev, hash=digest))
        prev = digest
    return entries


def head_of(entries: list[StoredEntry]) -> ChainHead:
    return ChainHead(entries[-1].seq, entries[-1].hash)


def kinds(verdict: object) -> list[tuple[str, int, int | None]]:
    return [(p.kind, p.seq, p.entry_id) for p in verdict.problems]  # type: ignore[attr-defined]


def test_an_intact_chain_verifies_and_reports_its_head() -> None:
    entries = chain(5)
    verdict = verify_chain(list(reversed(entries)), head=head_of(entries))
    assert verdict.ok
    assert (verdict.entries, verdict.head_seq, verdict.head_hash) == (5, 5, entries[-1].hash)
    empty = verify_chain([], head=ChainHead(0, GENESIS_HASH))
    assert empty.ok
    assert empty.head_hash == GENESIS_HASH


def test_the_hash_is_sha256_of_prev_hash_and_sorted_compact_json() -> None:
    import hashlib

    c = content(1)
    text = canonical_json(c)
    assert text.startswith('{"created_at":"2026-03-01T12:00:01.000000+00:00","kind":"energy"')
    assert " " not in text
    assert json.loads(text)["run"] == str(RUN)
    expected = hashlib.sha256((GENESIS_HASH + text).encode()).hexdigest()
    assert entry_hash(GENESIS_HASH, c) == expected


def test_every_field_is_covered_by_the_hash() -> None:
    c = content(3)
    digest = entry_hash(GENESIS_HASH, c)
    for change in (
        {"seq": 4},
        {"project": "other"},
        {"run": None},
        {"kind": "carbon"},
        {"value_si": 3000.5},
        {"unit_si": "kJ"},
        {"value_given": 3.0},
        {"unit_given": "kJ"},
        {"source": "declared"},
        {"provenance": {"figure": "it_energy"}},
        {"created_at": c.created_at + timedelta(microseconds=1)},
    ):
        assert entry_hash(GENESIS_HASH, dataclasses.replace(c, **change)) != digest, change
    assert entry_hash("f" * 64, c) != digest


def test_numbers_hash_alike_however_the_database_gives_them_back() -> None:
    # PostgreSQL's JSONB returns 1e20 as the integer 100000000000000000000, 3.0 as 3.0.
    assert canonical_number(1e20) == canonical_number(100000000000000000000) == 10**20
    assert canonical_number(3.0) == canonical_number(3) == 3
    assert canonical_number(1.2345e25) == canonical_number(12345000000000000000000000)
    assert canonical_number(0.1) == 0.1
    a = content(1, provenance={"x": [1e20, 3.0, 0.5], "y": True})
    b = content(1, provenance={"y": True, "x": [100000000000000000000, 3, 0.5]})
    assert entry_hash(GENESIS_HASH, a) == entry_hash(GENESIS_HASH, b)
    with pytest.raises(ValueError, match="finite"):
        canonical_number(float("nan"))


def test_time_is_hashed_in_utc_and_naive_time_is_refused() -> None:
    local = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert iso_utc(local) == "2026-03-01T12:00:00.000000+00:00"
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 3, 1))


def test_a_modified_value_names_the_entry() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(
        entries[2], content=dataclasses.replace(entries[2].content, value_si=1.0)
    )
    verdict = verify_chain(entries, head=head_of(entries))
    assert kinds(verdict) == [("modified", 3, 103)]
    assert "content no longer matches its hash" in verdict.problems[0].message


def test_a_modified_entry_with_a_recomputed_hash_breaks_the_next_link() -> None:
    entries = chain(5)
    forged = dataclasses.replace(entries[2].content, value_si=1.0)
    entries[2] = dataclasses.replace(
        entries[2], content=forged, hash=entry_hash(entries[2].prev_hash, forged)
    )
    verdict = verify_chain(entries, head=head_of(chain(5)))
    assert kinds(verdict) == [("link_broken", 4, 104)]
    assert "seq 3 (id 103)" in verdict.problems[0].message


def test_rewriting_the_last_entry_with_its_hash_shows_at_the_recorded_head() -> None:
    entries = chain(3)
    head = head_of(entries)
    forged = dataclasses.replace(entries[2].content, value_si=1.0)
    entries[2] = dataclasses.replace(
        entries[2], content=forged, hash=entry_hash(entries[2].prev_hash, forged)
    )
    assert kinds(verify_chain(entries, head=head)) == [("head_mismatch", 3, 103)]


def test_a_deleted_entry_is_named_by_its_seq() -> None:
    entries = chain(5)
    head = head_of(entries)
    del entries[1]
    assert kinds(verify_chain(entries, head=head)) == [("deleted", 2, None)]


def test_deleting_the_newest_entries_shows_against_the_head() -> None:
    entries = chain(5)
    head = head_of(entries)
    verdict = verify_chain(entries[:3], head=head)
    assert kinds(verdict) == [("deleted", 4, None), ("deleted", 5, None)]
    assert "recorded head is seq 5" in verdict.problems[0].message


def test_a_forged_entry_appended_behind_the_head_is_named() -> None:
    entries = chain(3)
    head = head_of(entries)
    forged = content(4, value=7.0)
    entries.append(
        StoredEntry(id=999, content=forged, prev_hash=head.hash, hash=entry_hash(head.hash, forged))
    )
    verdict = verify_chain(entries, head=head)
    assert kinds(verdict) == [("inserted", 4, 999)]
    assert "beyond the recorded head" in verdict.problems[0].message


def test_a_forged_entry_inserted_in_the_middle_is_named() -> None:
    """The forger shifts seq 3… up by one and inserts at seq 3 with a valid hash and link."""
    entries = chain(4)
    shifted = [
        dataclasses.replace(e, content=dataclasses.replace(e.content, seq=e.seq + 1))
        for e in entries[2:]
    ]
    forged = content(3, value=7.0)
    intruder = StoredEntry(
        id=999, content=forged, prev_hash=entries[1].hash, hash=entry_hash(entries[1].hash, forged)
    )
    verdict = verify_chain([*entries[:2], intruder, *shifted], head=head_of(entries))
    assert ("inserted", 3, 999) in kinds(verdict)
    assert ("reordered", 4, 103) in kinds(verdict)
    assert ("reordered", 5, 104) in kinds(verdict)
    assert "written as seq 3" in next(p.message for p in verdict.problems if p.entry_id == 103)


def test_a_duplicated_seq_names_the_intruder_not_the_genuine_entry() -> None:
    entries = chain(4)
    forged = content(2, value=7.0)
    intruder = StoredEntry(
        id=50, content=forged, prev_hash=entries[0].hash, hash=entry_hash(entries[0].hash, forged)
    )
    verdict = verify_chain([*entries, intruder], head=head_of(entries))
    assert kinds(verdict) == [("inserted", 2, 50)]
    assert "held by entry id 102" in verdict.problems[0].message


def test_swapped_entries_are_reported_as_reordered() -> None:
    entries = chain(5)
    a, b = entries[1], entries[2]
    entries[1] = dataclasses.replace(b, content=dataclasses.replace(b.content, seq=2))
    entries[2] = dataclasses.replace(a, content=dataclasses.replace(a.content, seq=3))
    verdict = verify_chain(entries, head=head_of(chain(5)))
    assert kinds(verdict) == [("reordered", 2, 103), ("reordered", 3, 102)]
    assert verdict.problems[0].message == "entry id 103 sits at seq 2 but was written as seq 3"


def test_an_anchor_catches_a_consistently_rewritten_history() -> None:
    original = chain(4)
    anchor = {3: original[2].hash}
    # Rewrite from seq 2 on, recomputing every hash and link and the head: no link breaks.
    rewritten, prev = [original[0]], original[0].hash
    for e in original[1:]:
        forged = dataclasses.replace(e.content, value_si=e.content.value_si + 1)
        digest = entry_hash(prev, forged)
        rewritten.append(StoredEntry(id=e.id, content=forged, prev_hash=prev, hash=digest))
        prev = digest
    head = head_of(rewritten)
    assert verify_chain(rewritten, head=head).ok
    verdict = verify_chain(rewritten, head=head, anchors=anchor)
    assert kinds(verdict) == [("anchor", 3, 103)]
    assert verify_chain(original, head=head_of(original), anchors=anchor).ok


def test_a_wrong_genesis_link_is_reported() -> None:
    entries = chain(2)
    first = entries[0]
    entries[0] = dataclasses.replace(
        first, prev_hash="1" * 64, hash=entry_hash("1" * 64, first.content)
    )
    assert ("link_broken", 1, 101) in kinds(verify_chain(entries))
