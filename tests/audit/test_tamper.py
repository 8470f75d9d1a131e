"""Tampering with the ledger directly in SQL, as someone with database access would.

The attacker first disables the append-only triggers (PostgreSQL: ``DISABLE TRIGGER``; SQLite:
``DROP TRIGGER``), then changes rows. `db.ledger.verify` must find every change and name the
entry. Each tamper runs inside one transaction that the test rolls back, so the triggers and
rows come back for the next test (DDL is transactional on both backends).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from tests.support.client import TestClient, make_project
from thermoledger.db import ledger
from thermoledger.db.chain import EntryContent, entry_hash
from thermoledger.db.models import LedgerEntry, LedgerSource
from thermoledger.service import cli

AT = datetime(2025, 10, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Filled:
    project_id: int
    slug: str
    ids: dict[int, int]  # seq -> row id


@pytest.fixture
def filled(app: FastAPI) -> Filled:
    """A project whose ledger holds five entries."""
    project = make_project(app)
    with app.state.sessionmaker() as session, session.begin():
        project_id = session.scalar(
            sa.text("SELECT id FROM project WHERE slug = :slug"), {"slug": project.slug}
        )
        ids = {}
        for i in range(1, 6):
            record = ledger.append(
                session,
                project_id=project_id,
                figure="embodied" if i % 2 else "offset",
                value_si=1000.0 * i,
                value_given=float(i),
                unit_given="kgCO2e",
                source=LedgerSource.DECLARED,
                accounted_at=AT,
                provenance={"origin": "manual", "reference": f"LCA sheet {i}"},
            )
            ids[record.seq] = record.id
    return Filled(project_id, project.slug, ids)


def _postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


@contextmanager
def as_attacker(app: FastAPI, *, commit: bool = False) -> Iterator[Connection]:
    """A transaction with the append-only triggers out of the way; rolled back unless
    ``commit`` (then the triggers are restored before committing)."""
    with app.state.engine.connect() as connection:
        transaction = connection.begin()
        saved: list[str] = []
        if _postgres(connection):
            connection.exec_driver_sql("ALTER TABLE ledger_entry DISABLE TRIGGER USER")
        else:
            rows = connection.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'trigger' AND tbl_name = 'ledger_entry'"
            ).all()
            assert len(rows) == 2
            for name, sql in rows:
                connection.exec_driver_sql(f"DROP TRIGGER {name}")
                saved.append(sql)
        yield connection
        if commit:
            if _postgres(connection):
                connection.exec_driver_sql("ALTER TABLE ledger_entry ENABLE TRIGGER USER")
            for sql in saved:
                connection.exec_driver_sql(sql)
            transaction.commit()
        else:
            transaction.rollback()


def problems(connection: Connection, filled: Filled) -> list[tuple[str, int, int | None]]:
    with Session(bind=connection) as session:
        verdict = ledger.verify(session, project_id=filled.project_id)
    return [(p.kind, p.seq, p.entry_id) for p in verdict.problems]


def test_an_untouched_ledger_verifies(app: FastAPI, filled: Filled) -> None:
    with app.state.engine.connect() as connection:
        assert problems(connection, filled) == []


@pytest.mark.parametrize(
    "statement", ["UPDATE ledger_entry SET value_si = 0", "DELETE FROM ledger_entry"]
)
def test_the_triggers_refuse_rewriting_history(
    app: FastAPI, filled: Filled, statement: str
) -> None:
    with (
        app.state.engine.connect() as connection,
        connection.begin(),
        pytest.raises(sa.exc.IntegrityError, match="append-only"),
    ):
        connection.execute(
            sa.text(f"{statement} WHERE project_id = :p AND seq = 1"), {"p": filled.project_id}
        )


def test_a_modified_value_is_named(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        sql.execute(
            sa.text("UPDATE ledger_entry SET value_si = 1 WHERE project_id = :p AND seq = 3"),
            {"p": filled.project_id},
        )
        assert problems(sql, filled) == [("modified", 3, filled.ids[3])]


def test_modified_provenance_is_named(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        if _postgres(sql):
            change = "jsonb_set(provenance, '{reference}', '\"forged\"')"
        else:
            change = "json_set(provenance, '$.reference', 'forged')"
        sql.execute(
            sa.text(
                f"UPDATE ledger_entry SET provenance = {change} WHERE project_id = :p AND seq = 4"
            ),
            {"p": filled.project_id},
        )
        assert problems(sql, filled) == [("modified", 4, filled.ids[4])]


def test_a_deleted_entry_is_named(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        sql.execute(
            sa.text("DELETE FROM ledger_entry WHERE project_id = :p AND seq = 2"),
            {"p": filled.project_id},
        )
        assert problems(sql, filled) == [("deleted", 2, None)]


def test_deleting_the_newest_entry_is_named(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        sql.execute(
            sa.text("DELETE FROM ledger_entry WHERE project_id = :p AND seq = 5"),
            {"p": filled.project_id},
        )
        assert problems(sql, filled) == [("deleted", 5, None)]


def _forge(sql: Connection, filled: Filled, seq: int, prev_hash: str) -> int:
    """Insert a well-formed forged entry at ``seq`` (the forger knows the hash rule)."""
    created_at = datetime(2025, 10, 2, tzinfo=UTC)
    content = EntryContent(
        seq=seq,
        project=filled.slug,
        run=None,
        kind="carbon",
        value_si=-5e6,
        unit_si="gCO2e",
        value_given=-5.0,
        unit_given="tCO2e",
        source="declared",
        provenance={"figure": "offset", "accounted_at": AT.isoformat()},
        created_at=created_at,
    )
    digest = entry_hash(prev_hash, content)
    forged_id = 1 + int(sql.execute(sa.text("SELECT max(id) FROM ledger_entry")).scalar_one())
    result = sql.execute(
        sa.text(
            "INSERT INTO ledger_entry (id, project_id, run_id, seq, kind, value_si, unit_si, "
            "value_given, unit_given, source, provenance, created_at, prev_hash, hash) VALUES "
            "(:id, :p, NULL, :seq, 'carbon', -5e6, 'gCO2e', -5.0, 'tCO2e', 'declared', :prov, :at, "
            ":prev, :hash)"
        ).bindparams(
            sa.bindparam("prov", type_=LedgerEntry.__table__.c.provenance.type),
            sa.bindparam("at", type_=LedgerEntry.__table__.c.created_at.type),
        ),
        {
            "id": forged_id,
            "p": filled.project_id,
            "seq": seq,
            "prov": content.provenance,
            "at": created_at,
            "prev": prev_hash,
            "hash": digest,
        },
    )
    assert result.rowcount == 1
    return forged_id


def _hash(sql: Connection, filled: Filled, seq: int) -> str:
    return str(
        sql.execute(
            sa.text("SELECT hash FROM ledger_entry WHERE project_id = :p AND seq = :s"),
            {"p": filled.project_id, "s": seq},
        ).scalar_one()
    )


def test_a_forged_entry_appended_behind_the_services_back_is_named(
    app: FastAPI, filled: Filled
) -> None:
    with as_attacker(app) as sql:
        forged = _forge(sql, filled, 6, _hash(sql, filled, 5))
        assert problems(sql, filled) == [("inserted", 6, forged)]


def test_a_forged_entry_inserted_in_the_middle_is_named(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        for seq in (5, 4, 3):  # make room at seq 3, one row at a time (unique seq)
            sql.execute(
                sa.text("UPDATE ledger_entry SET seq = seq + 1 WHERE project_id = :p AND seq = :s"),
                {"p": filled.project_id, "s": seq},
            )
        forged = _forge(sql, filled, 3, _hash(sql, filled, 2))
        found = problems(sql, filled)
        assert ("inserted", 3, forged) in found
        assert {(k, s) for k, s, _ in found if k == "reordered"} == {
            ("reordered", 4),
            ("reordered", 5),
            ("reordered", 6),
        }


def test_a_duplicated_seq_names_the_forged_entry(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        if _postgres(sql):
            sql.exec_driver_sql(
                "ALTER TABLE ledger_entry DROP CONSTRAINT uq_ledger_entry_project_id_seq"
            )
        else:  # SQLite cannot drop a constraint: the attacker copies the table without it
            sql.exec_driver_sql("CREATE TABLE ledger_copy AS SELECT * FROM ledger_entry")
            sql.exec_driver_sql("DROP TABLE ledger_entry")
            sql.exec_driver_sql("ALTER TABLE ledger_copy RENAME TO ledger_entry")
        forged = _forge(sql, filled, 2, _hash(sql, filled, 1))
        assert problems(sql, filled) == [("inserted", 2, forged)]


def test_swapped_entries_are_named(app: FastAPI, filled: Filled) -> None:
    with as_attacker(app) as sql:
        for old, new in ((2, 1_000_000), (3, 2), (1_000_000, 3)):
            sql.execute(
                sa.text("UPDATE ledger_entry SET seq = :new WHERE project_id = :p AND seq = :old"),
                {"p": filled.project_id, "old": old, "new": new},
            )
        assert problems(sql, filled) == [
            ("reordered", 2, filled.ids[3]),
            ("reordered", 3, filled.ids[2]),
        ]


def test_a_rewritten_entry_with_a_recomputed_hash_breaks_the_next_link(
    app: FastAPI, filled: Filled
) -> None:
    with as_attacker(app) as sql, Session(bind=sql) as session:
        stored = {e.seq: e for e in ledger._stored_entries(session, filled.project_id, filled.slug)}
        entry = stored[2]
        import dataclasses

        forged = dataclasses.replace(entry.content, value_si=1.0)
        sql.execute(
            sa.text("UPDATE ledger_entry SET value_si = 1, hash = :h WHERE id = :id"),
            {"h": entry_hash(entry.prev_hash, forged), "id": entry.id},
        )
        assert problems(sql, filled) == [("link_broken", 3, filled.ids[3])]


def test_the_api_and_the_cli_name_a_broken_entry(
    app: FastAPI, client: TestClient, database_url: str
) -> None:
    project = make_project(app)
    response = client.post(
        "/api/v1/ledger",
        json={"figure": "embodied", "quantity": "2 kgCO2e", "reference": "vendor LCA"},
        headers=project.admin,
    )
    assert response.status_code == 201, response.text
    entry = response.json()
    good = client.get("/api/v1/audit/verify", headers=project.admin).json()
    assert good["ok"]
    assert good["head"] == {"seq": 1, "hash": entry["hash"]}
    code, out = _cli("audit", "verify", "--project", project.slug, "--database-url", database_url)
    assert code == 0
    assert "OK" in out

    with as_attacker(app, commit=True) as sql:
        sql.execute(
            sa.text("UPDATE ledger_entry SET value_si = 1 WHERE id = :id"), {"id": entry["id"]}
        )

    assert client.get("/api/v1/audit/verify", headers=project.read).status_code == 403
    body = client.get("/api/v1/audit/verify", headers=project.admin).json()
    assert body["ok"] is False
    assert [(p["kind"], p["seq"], p["id"]) for p in body["problems"]] == [
        ("modified", 1, entry["id"])
    ]
    code, out = _cli("audit", "verify", "--project", project.slug, "--database-url", database_url)
    assert code == 1
    assert f"seq 1 (id {entry['id']}) modified" in out
    # An anchor published before the tampering proves it, even for a consistent rewrite.
    anchor = f"1:{entry['hash']}"
    assert (
        client.get("/api/v1/audit/verify", params={"anchor": anchor}, headers=project.admin).json()[
            "ok"
        ]
        is False
    )
    bad = client.get("/api/v1/audit/verify", params={"anchor": "1:xyz"}, headers=project.admin)
    assert bad.status_code == 422
    assert bad.json()["field"] == "anchor[0]"


def _cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def test_the_cli_refuses_bad_arguments(database_url: str) -> None:
    anchor = "1:" + "a" * 64
    assert _cli("audit", "verify", "--anchor", "1:xyz", "--database-url", database_url)[0] == 2
    code, out = _cli("audit", "verify", "--anchor", anchor, "--database-url", database_url)
    assert (code, "needs --project" in out) == (2, True)
    code, out = _cli("audit", "verify", "--project", "no-such", "--database-url", database_url)
    assert (code, "no project 'no-such'" in out) == (1, True)
