"""The migrated schema enforces what the models promise, the same way on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from thermoledger.db.models import (
    ApiToken,
    Chunk,
    Device,
    DevicePowerMethod,
    DeviceTotal,
    EnergyMethod,
    LedgerEntry,
    LedgerKind,
    LedgerSource,
    Phase,
    PhaseTotal,
    Project,
    Run,
    RunKind,
    RunStatus,
    Scope,
)
from thermoledger.db.samples import decode_samples, encode_samples

T0_S = 1_760_000_000.0  # 2025-10-09, a plausible unix time
STARTED = datetime(2025, 10, 9, 8, 53, 20, 123456, tzinfo=UTC)


def _project(session: Session, slug: str = "lab") -> Project:
    project = Project(slug=slug, name=slug.title())
    session.add(project)
    session.flush()
    return project


def _run(session: Session, project: Project, **overrides: Any) -> Run:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "project": project,
        "name": "train.py",
        "kind": RunKind.TRAINING,
        "started_at": STARTED,
        "tags": {"model": "llama-7b"},
    }
    fields.update(overrides)
    run = Run(**fields)
    session.add(run)
    session.flush()
    return run


def _device(session: Session, run: Run, index: int = 0, **overrides: Any) -> Device:
    fields: dict[str, Any] = {
        "run": run,
        "host": "node-1",
        "device_index": index,
        "uuid": f"GPU-{uuid.uuid4()}",
        "name": "NVIDIA H100 80GB HBM3",
        "catalog_key": "h100-sxm",
        "power_limit_w": 700.0,
        "has_energy_counter": True,
        "power_method": DevicePowerMethod.POWER_AVG,
    }
    fields.update(overrides)
    device = Device(**fields)
    session.add(device)
    session.flush()
    return device


def _chunk(device: Device, seq: int, **overrides: Any) -> Chunk:
    t0_s = T0_S + 10.0 * seq
    fields: dict[str, Any] = {
        "run_id": device.run_id,
        "device_id": device.id,
        "seq": seq,
        "t0_s": t0_s,
        "t1_s": t0_s + 10.0,
        "n": 100,
        "energy_j": 3000.0,
        "sensor_uncertainty_j": 60.0,
        "bound_below_j": 0.0,
        "bound_above_j": 25.0,
        "min_power_w": 290.0,
        "mean_power_w": 300.0,
        "max_power_w": 310.0,
        "method": EnergyMethod.COUNTER,
        "content_hash": hashlib.sha256(f"{device.id}/{seq}".encode()).hexdigest(),
    }
    fields.update(overrides)
    return Chunk(**fields)


@pytest.fixture
def device(session: Session) -> Device:
    device = _device(session, _run(session, _project(session)))
    session.commit()
    return device


def _rejects(session: Session, row: object, constraint: str) -> None:
    """Adding ``row`` fails with an IntegrityError that names ``constraint``."""
    session.add(row)
    with pytest.raises(sa.exc.IntegrityError) as caught:
        session.flush()
    session.rollback()
    assert constraint in str(caught.value.orig)


def test_run_device_chunks_round_trip(session: Session, device: Device) -> None:
    session.add_all([_chunk(device, seq) for seq in range(3)])
    session.commit()
    session.expunge_all()

    total_j = session.scalar(
        sa.select(sa.func.sum(Chunk.energy_j)).where(Chunk.run_id == device.run_id)
    )
    assert total_j == pytest.approx(9000.0)
    run = session.get_one(Run, device.run_id)
    assert run.kind is RunKind.TRAINING
    assert run.status is RunStatus.RUNNING
    assert run.tags == {"model": "llama-7b"}
    assert [d.name for d in run.devices] == ["NVIDIA H100 80GB HBM3"]
    chunk = session.get_one(Chunk, (device.run_id, device.id, 1))
    assert chunk.t0_s == T0_S + 10.0  # float64 unix seconds survive bit for bit
    assert chunk.method is EnergyMethod.COUNTER
    assert chunk.gap_s == 0.0
    assert chunk.gap_count == 0
    assert (chunk.reset_count, chunk.wrap_count) == (0, 0)
    assert (chunk.sensor_uncertainty_j, chunk.bound_below_j, chunk.bound_above_j) == (
        60.0,
        0.0,
        25.0,
    )


def test_duplicate_chunk_key_is_rejected(session: Session, device: Device) -> None:
    session.add(_chunk(device, 0))
    session.commit()
    session.expunge_all()  # a fresh request: the first copy is not in this session
    _rejects(session, _chunk(device, 0, energy_j=3000.5), "chunk")
    assert session.scalar(sa.select(sa.func.count()).select_from(Chunk)) == 1


def test_repeated_chunk_upload_is_a_no_op_with_on_conflict(
    session: Session, device: Device
) -> None:
    """The idempotency key supports INSERT ... ON CONFLICT DO NOTHING on both backends."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = [
        {
            column.key: getattr(_chunk(device, seq), column.key)
            for column in Chunk.__table__.columns
            if column.key
            not in ("samples", "created_at", "gap_s", "gap_count", "reset_count", "wrap_count")
        }
        for seq in (0, 1)
    ]
    statement = insert(Chunk).on_conflict_do_nothing(index_elements=["run_id", "device_id", "seq"])
    session.execute(statement, values[:1])
    session.execute(statement, values)  # seq 0 again: skipped, seq 1: inserted
    session.commit()
    assert session.scalars(sa.select(Chunk.seq).order_by(Chunk.seq)).all() == [0, 1]


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"energy_j": -1.0}, "ck_chunk_energy_valid"),
        ({"energy_j": math.inf}, "ck_chunk_energy_valid"),
        ({"sensor_uncertainty_j": -1.0}, "ck_chunk_band_terms_valid"),
        ({"bound_below_j": -0.5}, "ck_chunk_band_terms_valid"),
        # +inf is stored as the 1e300 sentinel by `db.chunks`, never as itself
        ({"bound_above_j": math.inf}, "ck_chunk_band_terms_valid"),
        ({"t1_s": T0_S - 1.0}, "ck_chunk_time_order"),
        ({"n": 0}, "ck_chunk_n_positive"),
        ({"method": EnergyMethod.POWER_AVG, "mean_power_w": 320.0}, "ck_chunk_power_order"),
        ({"method": EnergyMethod.POWER_INSTANT, "mean_power_w": 280.0}, "ck_chunk_power_order"),
        ({"method": EnergyMethod.ESTIMATE, "mean_power_w": 280.0}, "ck_chunk_power_order"),
        ({"min_power_w": 320.0}, "ck_chunk_power_order"),  # min above max, whatever the method
        ({"min_power_w": -5.0}, "ck_chunk_power_order"),
        ({"mean_power_w": -1.0}, "ck_chunk_power_order"),
        ({"gap_s": 1.5, "gap_count": 0}, "ck_chunk_gaps_valid"),
        ({"reset_count": -1}, "ck_chunk_counts_nonnegative"),
        ({"wrap_count": -1}, "ck_chunk_counts_nonnegative"),
        ({"content_hash": "abc"}, "ck_chunk_content_hash_sha256_hex"),
    ],
)
def test_chunk_checks_reject_bad_summaries(
    session: Session, device: Device, overrides: dict[str, Any], constraint: str
) -> None:
    _rejects(session, _chunk(device, 0, **overrides), constraint)


@pytest.mark.parametrize(
    "column", ["energy_j", "sensor_uncertainty_j", "bound_below_j", "bound_above_j", "mean_power_w"]
)
def test_nan_is_rejected(session: Session, device: Device, column: str) -> None:
    # PostgreSQL: NaN sorts above every number, so only the finite bound stops it.
    # SQLite: NaN is stored as NULL, which NOT NULL stops. Either way: never stored.
    session.add(_chunk(device, 0, **{column: math.nan}))
    with pytest.raises(sa.exc.IntegrityError):
        session.flush()


@pytest.mark.parametrize("mean_power_w", [250.0, 330.0])
@pytest.mark.parametrize("method", [EnergyMethod.COUNTER, EnergyMethod.MIXED])
def test_a_counter_chunk_mean_may_lie_outside_the_sensor_range(
    session: Session, device: Device, method: EnergyMethod, mean_power_w: float
) -> None:
    """The mean comes from the counter, min/max from the lagging power sensor."""
    session.add(_chunk(device, 0, method=method, mean_power_w=mean_power_w))
    session.commit()
    session.expunge_all()
    stored = session.get_one(Chunk, (device.run_id, device.id, 0))
    assert (stored.method, stored.mean_power_w) == (method, mean_power_w)


def test_unbounded_sentinel_and_counts_round_trip(session: Session, device: Device) -> None:
    session.add(_chunk(device, 0, bound_above_j=1e300, reset_count=2, wrap_count=1))
    session.commit()
    session.expunge_all()
    stored = session.get_one(Chunk, (device.run_id, device.id, 0))
    assert (stored.bound_above_j, stored.reset_count, stored.wrap_count) == (1e300, 2, 1)


def test_method_vocabularies_are_checked_in_the_database(session: Session, device: Device) -> None:
    """Below the ORM (which refuses unknown values itself), the CHECKs hold the vocabularies."""
    session.add(_chunk(device, 0))
    session.commit()
    session.execute(sa.text("UPDATE chunk SET method = 'mixed'"))  # a chunk may be mixed
    session.commit()
    with pytest.raises(sa.exc.IntegrityError, match="ck_chunk_method_valid"):
        session.execute(sa.text("UPDATE chunk SET method = 'none'"))
    session.rollback()
    session.execute(sa.text("UPDATE device SET power_method = 'counter'"))  # RAPL
    session.commit()
    for value in ("mixed", "none"):  # a device has one method, and one without is not sent
        with pytest.raises(sa.exc.IntegrityError, match="ck_device_power_method_valid"):
            session.execute(sa.text(f"UPDATE device SET power_method = '{value}'"))
        session.rollback()


def test_method_enums_match_the_wire() -> None:
    from thermoledger.meters.wire import METHODS

    assert [m.value for m in EnergyMethod] == list(METHODS)
    assert {m.value for m in DevicePowerMethod} == set(METHODS) - {"mixed"}


def test_device_mig_flag_round_trips(session: Session) -> None:
    run = _run(session, _project(session))
    _device(session, run, 0, mig=True)
    _device(session, run, 1)
    session.commit()
    session.expunge_all()
    flags = session.execute(
        sa.select(Device.device_index, Device.mig).order_by(Device.device_index)
    ).all()
    assert [tuple(row) for row in flags] == [(0, True), (1, False)]


def test_running_totals_go_with_their_run(session: Session, device: Device) -> None:
    phase = Phase(run_id=device.run_id, name="epoch-1", t0_s=T0_S, t1_s=T0_S + 60.0)
    session.add(phase)
    session.flush()
    terms = {"energy_j": 3000.0, "sensor_uncertainty_j": 60.0, "bound_below_j": 0.0}
    session.add_all(
        [
            DeviceTotal(
                run_id=device.run_id,
                device_id=device.id,
                chunks=1,
                samples=100,
                bound_above_j=1e300,  # unbounded
                t0_s=T0_S,
                t1_s=T0_S + 10.0,
                peak_power_w=310.0,
                gap_s=0.0,
                gap_count=0,
                reset_count=1,
                method=EnergyMethod.COUNTER,
                **terms,
            ),
            PhaseTotal(phase_id=phase.id, device_id=device.id, bound_above_j=25.0, **terms),
        ]
    )
    session.commit()
    session.execute(sa.delete(Run).where(Run.id == device.run_id))
    session.commit()
    for model in (DeviceTotal, PhaseTotal):
        assert session.scalar(sa.select(sa.func.count()).select_from(model)) == 0


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"energy_j": -1.0}, "ck_device_total_energy_valid"),
        ({"bound_above_j": 2e300}, "ck_device_total_energy_valid"),
        ({"chunks": 0}, "ck_device_total_counts_positive"),
        ({"t1_s": T0_S - 1.0}, "ck_device_total_span_valid"),
        ({"reset_count": -1}, "ck_device_total_event_counts_nonnegative"),
    ],
)
def test_device_total_checks(
    session: Session, device: Device, overrides: dict[str, Any], constraint: str
) -> None:
    fields: dict[str, Any] = {
        "run_id": device.run_id,
        "device_id": device.id,
        "chunks": 1,
        "samples": 100,
        "energy_j": 3000.0,
        "sensor_uncertainty_j": 60.0,
        "bound_below_j": 0.0,
        "bound_above_j": 0.0,
        "t0_s": T0_S,
        "t1_s": T0_S + 10.0,
        "peak_power_w": 310.0,
        "gap_s": 0.0,
        "gap_count": 0,
        "reset_count": 0,
        "method": EnergyMethod.COUNTER,
    }
    _rejects(session, DeviceTotal(**{**fields, **overrides}), constraint)


def test_chunk_must_belong_to_its_devices_run(session: Session, device: Device) -> None:
    other_run = _run(session, session.get_one(Project, device.run.project_id))
    session.add(_chunk(device, 0, run_id=other_run.id))
    with pytest.raises(sa.exc.IntegrityError) as caught:
        session.flush()
    message = str(caught.value.orig)
    assert "fk_chunk_run_id_device_id_device" in message or "FOREIGN KEY" in message


def test_deleting_a_run_deletes_its_devices_and_chunks(session: Session, device: Device) -> None:
    session.add(_chunk(device, 0))
    session.add(Phase(run_id=device.run_id, name="epoch-1", t0_s=T0_S, t1_s=T0_S + 60.0))
    session.commit()
    session.execute(sa.delete(Run).where(Run.id == device.run_id))
    session.commit()
    for model in (Device, Chunk, Phase):
        assert session.scalar(sa.select(sa.func.count()).select_from(model)) == 0


def test_device_uuid_is_unique_within_a_run(session: Session, device: Device) -> None:
    twin = Device(
        run_id=device.run_id,
        host="node-1.cluster",  # another spelling of the same host
        device_index=0,
        uuid=device.uuid,
        name=device.name,
        has_energy_counter=True,
        power_method=DevicePowerMethod.POWER_AVG,
    )
    _rejects(session, twin, "uuid")


def test_run_checks(session: Session) -> None:
    project = _project(session)
    session.commit()
    _rejects(
        session,
        Run(
            id=uuid.uuid4(),
            project_id=project.id,
            name="x",
            kind=RunKind.EVAL,
            started_at=STARTED,
            ended_at=STARTED - timedelta(seconds=1),
            status=RunStatus.FINISHED,
        ),
        "ck_run_time_order",
    )
    with pytest.raises(sa.exc.IntegrityError, match="ck_run_kind_valid"):
        # Below the ORM, which would refuse the value itself.
        session.execute(
            sa.text(
                "INSERT INTO run (id, client_id, project_id, name, kind, status, started_at, "
                "tags, host_info, simulated, created_at, updated_at) VALUES (:id, :id, :p, 'x', "
                "'bogus', 'running', :t, '{}', '{}', false, :t, :t)"
            ).bindparams(
                sa.bindparam("id", type_=sa.Uuid()), sa.bindparam("t", type_=sa.DateTime())
            ),
            {"id": uuid.uuid4(), "p": project.id, "t": datetime(2025, 1, 1)},
        )
    session.rollback()
    with pytest.raises(sa.exc.StatementError, match="bogus"):
        _run(session, project, kind="bogus")


def test_timestamps_round_trip_as_utc(engine: Engine, session: Session) -> None:
    project = _project(session)
    tokyo = timezone(timedelta(hours=9))
    started = datetime(2025, 10, 9, 17, 53, 20, 123456, tzinfo=tokyo)  # = STARTED in UTC
    run = _run(session, project, started_at=started)
    session.commit()
    session.expunge_all()

    loaded = session.get_one(Run, run.id)
    assert loaded.started_at == STARTED
    assert loaded.started_at.utcoffset() == timedelta(0)
    assert loaded.created_at.tzinfo is not None
    # Range filters compare instants, whatever zone the bound is given in.
    later = STARTED.astimezone(tokyo) + timedelta(microseconds=1)
    assert session.scalars(sa.select(Run.id).where(Run.started_at < later)).all() == [run.id]
    assert session.scalars(sa.select(Run.id).where(Run.started_at > later)).all() == []
    if engine.dialect.name == "sqlite":
        stored = session.execute(sa.text("SELECT started_at FROM run")).scalar_one()
        assert stored == "2025-10-09 08:53:20.123456"  # naive UTC text, sortable


def test_naive_datetime_is_refused(session: Session) -> None:
    project = _project(session)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        _run(session, project, started_at=datetime(2025, 10, 9, 8, 0))


def test_samples_blob_round_trip(session: Session, device: Device) -> None:
    rng = np.random.default_rng(7)
    columns: dict[str, npt.NDArray[Any]] = {
        "t_s": np.linspace(0.0, 9.9, 100, dtype=np.float32),
        "power_w": (300.0 + rng.normal(0.0, 5.0, 100)).astype(np.float32),
        "energy_j": np.cumsum(np.full(100, 30.0)) + 1.2e7,
    }
    session.add(_chunk(device, 0, samples=encode_samples(columns)))
    session.commit()
    session.expunge_all()

    blob = session.scalars(sa.select(Chunk.samples)).one()
    assert blob is not None
    decoded = decode_samples(blob)
    assert list(decoded) == list(columns)
    for name, array in columns.items():
        assert decoded[name].dtype == array.dtype
        np.testing.assert_array_equal(decoded[name], array)


def _ledger(project: Project, seq: int) -> LedgerEntry:
    return LedgerEntry(
        project_id=project.id,
        seq=seq,
        kind=LedgerKind.ENERGY,
        value_si=3.6e6,
        unit_si="J",
        value_given=1.0,
        unit_given="kWh",
        source=LedgerSource.MEASURED,
        provenance={"chunks": [0, 1]},
        prev_hash="0" * 64,
        hash=hashlib.sha256(b"entry").hexdigest(),
    )


def test_ledger_is_append_only(session: Session) -> None:
    project = _project(session)
    session.add(_ledger(project, 1))
    session.commit()

    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        session.execute(sa.update(LedgerEntry).values(value_si=0.0))
    session.rollback()
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        session.execute(sa.delete(LedgerEntry))
    session.rollback()
    _rejects(session, _ledger(project, 1), "seq")  # one seq per project
    entry = session.scalars(sa.select(LedgerEntry)).one()
    assert (entry.value_si, entry.unit_given, entry.provenance) == (
        3.6e6,
        "kWh",
        {"chunks": [0, 1]},
    )


def test_token_scopes_are_a_checked_bitmask(session: Session) -> None:
    project = _project(session)
    token = ApiToken(
        project_id=project.id,
        name="sidecar",
        prefix="tl_ab12cd34",
        hash=hashlib.sha256(b"secret").hexdigest(),
        scopes=Scope.INGEST | Scope.READ,
    )
    session.add(token)
    session.commit()
    session.expunge_all()
    loaded = session.scalars(sa.select(ApiToken)).one()
    assert loaded.scopes == Scope.INGEST | Scope.READ
    assert Scope.ADMIN not in loaded.scopes

    with pytest.raises(sa.exc.IntegrityError, match="ck_api_token_scopes_valid"):
        session.execute(sa.text("UPDATE api_token SET scopes = 8"))
    session.rollback()
