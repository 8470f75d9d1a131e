"""Rows written straight through `thermoledger.db` (no service): a project's run with one GPU."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from thermoledger.db.models import DeviceKind, DevicePowerMethod, RunKind
from thermoledger.db.records import DeviceSpec
from thermoledger.db.runs import upsert_run
from thermoledger.db.tokens import get_or_create_project
from thermoledger.db.types import utcnow


def gpu_run(session: Session, *, slug: str, name: str) -> tuple[int, uuid.UUID, DeviceSpec]:
    """A new simulated training run of project ``slug`` (made if needed) and the spec of its one
    GPU (an H100 with an energy counter and averaged power), in the caller's transaction; the
    device is stored with the run's first chunks.

    Returns:
        The project's id, the run's id and the GPU's spec.
    """
    project, _ = get_or_create_project(session, slug=slug)
    run_id = uuid.uuid4()
    upsert_run(
        session,
        project_id=project.id,
        run_id=run_id,
        name=name,
        kind=RunKind.TRAINING,
        started_at=utcnow(),
        tags={},
        host_info={},
        simulated=True,
    )
    device = DeviceSpec(
        key="node/gpu0",
        host="node",
        kind=DeviceKind.GPU,
        index=0,
        uid="GPU-0",
        name="NVIDIA H100 80GB HBM3",
        power_limit_w=700.0,
        has_energy_counter=True,
        power_method=DevicePowerMethod.POWER_AVG,
        simulated=True,
    )
    return project.id, run_id, device
