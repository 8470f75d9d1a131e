"""API schemas: what requests carry and responses return, separate from the tables.

Families follow the FastAPI template: ``XCreate`` (request body), ``XPublic`` (response).
Quantities travel as ``{"value": 3.6, "unit": "MJ"}`` or ``"3.6 MJ"`` and are checked by the
routes with `accounting.units.parse_quantity` against the dimension the field needs, so a wrong
dimension is a 422 naming the field and both dimensions. Every bare number has its unit in its
name (``t0_s``, ``power_limit_w``).

The ingest models mirror `meters.wire` (the meter's TypedDicts) field for field; they are
strict (no "3" for 3, no true for 1), refuse NaN and ±inf except where the wire allows an
unbounded band (``energy_high_j``, ``bound_above_j``: a number or ``"inf"``), and ignore
fields they do not know, so a newer meter can add some.

Every time a request stores or filters on lies in the service's stored time range
(`service.timebounds`: `StoredTime`, `StoredUnixS`; chunk times are checked by `service.ingest`).
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from thermoledger.db.models import FINITE_MAX as MODELS_FINITE_MAX
from thermoledger.db.models import DeviceKind, DevicePowerMethod, EnergyMethod, RunKind, RunStatus
from thermoledger.db.records import INT64_MAX, PhaseRecord, RunRecord, TokenRecord
from thermoledger.meters.wire import SAMPLES_F64_BASE64, decode_column

from .timebounds import StoredTime, StoredUnixS

__all__ = [
    "FINITE_MAX",
    "INT32_MAX",
    "INT64_MAX",
    "SLUG_PATTERN",
    "TAG_KEY_PATTERN",
    "BinaryBatchHeaderIn",
    "ChunkAckPublic",
    "ChunkColumnsIn",
    "ChunkIn",
    "CountIn",
    "DeviceIn",
    "HealthPublic",
    "IngestBatchIn",
    "IngestPublic",
    "PhaseCreate",
    "PhasePublic",
    "ProjectCreate",
    "ProjectPublic",
    "QuantityIn",
    "ReadyPublic",
    "RunCreate",
    "RunEnd",
    "RunPage",
    "RunPublic",
    "SamplesIn",
    "TokenCreate",
    "TokenIssued",
    "TokenPublic",
    "WorkDeclare",
]

_API = ConfigDict(extra="forbid", allow_inf_nan=False)

#: Text must not hold NUL: PostgreSQL refuses it in text and JSON, so it is refused here.
_NO_NUL = r"^[^\x00]*$"
#: Largest magnitude a stored float may have (the tables' finite CHECKs).
FINITE_MAX = float(MODELS_FINITE_MAX)
#: Largest value of the INTEGER (32-bit) columns; BIGINT ones go to `INT64_MAX`.
INT32_MAX = 2**31 - 1

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_NUL)
]
#: Tag keys: letters, digits and ``_ . : / -`` (no ``=``: ``?tag=key=value`` filters on them).
TAG_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN.pattern)]
TagValue = Annotated[str, StringConstraints(max_length=200, pattern=_NO_NUL)]
Dtype = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,16}$")]
ScopeName = Literal["ingest", "read", "admin"]


_QUANTITY_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"value": {"type": "number"}, "unit": {"type": "string"}},
            "required": ["value", "unit"],
            "additionalProperties": False,
        },
        {"type": "string", "examples": ["3.6 MJ"]},
    ]
}
_COUNT_SCHEMA: dict[str, Any] = {
    "oneOf": [{"type": "integer", "minimum": 0}, *_QUANTITY_SCHEMA["oneOf"]]
}

#: A quantity: ``{"value": 3.6, "unit": "MJ"}`` or ``"3.6 MJ"``. Checked by the routes with
#: `parse_quantity` (which names the field and both dimensions), not here.
QuantityIn = Annotated[Any, WithJsonSchema(_QUANTITY_SCHEMA)]
#: A count (tokens, parameters): a plain integer, or a quantity of the count's dimension.
CountIn = Annotated[Any, WithJsonSchema(_COUNT_SCHEMA)]


def _plain_json(value: Any) -> Any:
    """Refuse what JSON columns cannot hold on every backend: non-finite numbers, NUL."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{path or 'value'}: {node!r} is not a finite number")
        if isinstance(node, str) and "\x00" in node:
            raise ValueError(f"{path or 'value'}: text must not contain NUL")
        if isinstance(node, dict):
            for key, item in node.items():
                walk(key, path)
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(value, "")
    return value


# --------------------------------------------------------------------------- health


class HealthPublic(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class ReadyPublic(BaseModel):
    """Readiness: the database answers and its schema is at the newest migration."""

    status: Literal["ready"] = "ready"
    revision: str


# --------------------------------------------------------------------------- projects, tokens


class ProjectCreate(BaseModel):
    """A new project (operator only)."""

    model_config = _API

    slug: Slug
    name: Name | None = None


class ProjectPublic(BaseModel):
    """A project."""

    slug: str
    name: str
    created_at: datetime


class TokenCreate(BaseModel):
    """A new token for a project."""

    model_config = _API

    name: Name
    scopes: Annotated[list[ScopeName], Field(min_length=1, max_length=3)]
    expires_at: StoredTime | None = Field(
        default=None, description="with a time zone, inside the service's stored time range"
    )


class TokenPublic(BaseModel):
    """A token without its secret."""

    id: int
    project: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: TokenRecord, scopes: list[str]) -> TokenPublic:
        """From a stored record (`db.records`) and its scope names."""
        return cls(
            id=record.id,
            project=record.project_slug,
            name=record.name,
            prefix=record.prefix,
            scopes=scopes,
            created_at=record.created_at,
            last_used_at=record.last_used_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
        )


class TokenIssued(TokenPublic):
    """A token just issued: ``token`` is shown this once and never again."""

    token: str


# --------------------------------------------------------------------------- runs


class RunCreate(BaseModel):
    """A run as a launcher or meter declares it (``PUT /runs/{run_id}``)."""

    model_config = _API

    name: Name
    kind: RunKind = RunKind.TRAINING
    started_at: StoredTime | None = Field(
        default=None,
        description="Start time with a time zone, inside the service's stored time range "
        "(default 2000-01-01Z to 2100-01-01Z); default: when the server saw it",
    )
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=64)] = Field(default_factory=dict)
    host_info: Annotated[dict[str, Any], AfterValidator(_plain_json)] = Field(
        default_factory=dict,
        description="launcher facts (hostnames, job ids, versions): finite numbers, no NUL",
    )
    simulated: bool = False


class DeclaredPublic(BaseModel):
    """Work a run declared."""

    flops: float | None
    flops_dtype: str | None
    tokens: int | None
    model_params: int | None


class RunPublic(BaseModel):
    """A run."""

    id: UUID
    project: str
    name: str
    kind: RunKind
    status: RunStatus
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None
    tags: dict[str, Any]
    host_info: dict[str, Any]
    declared: DeclaredPublic
    simulated: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: RunRecord, project: str) -> RunPublic:
        """From a stored record (`db.records`)."""
        return cls(
            id=record.id,
            project=project,
            name=record.name,
            kind=record.kind,
            status=record.status,
            started_at=record.started_at,
            ended_at=record.ended_at,
            exit_code=record.exit_code,
            tags=record.tags,
            host_info=record.host_info,
            declared=DeclaredPublic(
                flops=record.declared_flops,
                flops_dtype=record.declared_flops_dtype,
                tokens=record.declared_tokens,
                model_params=record.declared_params,
            ),
            simulated=record.simulated,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class RunPage(BaseModel):
    """One page of runs, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[RunPublic]
    next_cursor: str | None


class RunEnd(BaseModel):
    """How a run ended (``/finish`` or ``/fail``)."""

    model_config = _API

    ended_at: StoredTime | None = None
    exit_code: Annotated[int, Field(ge=-(2**31), lt=2**31)] | None = None


class WorkDeclare(BaseModel):
    """Work a run declares: totals so far (a retry is harmless); omitted fields are kept."""

    model_config = _API

    flops: QuantityIn | None = Field(
        default=None, description='e.g. {"value": 3.2, "unit": "EFLOP"}'
    )
    dtype: Dtype | None = Field(default=None, description="precision of the FLOPs, e.g. bf16")
    tokens: CountIn | None = None
    model_params: CountIn | None = Field(default=None, description="model size N (parameters)")


# --------------------------------------------------------------------------- phases


class PhaseCreate(BaseModel):
    """A phase window; ``(name, t0_s)`` identifies it, so a re-sent phase is recognised."""

    model_config = _API

    name: Name
    t0_s: StoredUnixS
    t1_s: StoredUnixS | None = None
    flops: QuantityIn | None = None
    dtype: Dtype | None = None
    tokens: CountIn | None = None
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=64)] = Field(default_factory=dict)


class PhasePublic(BaseModel):
    """A phase."""

    id: int
    name: str
    t0_s: float
    t1_s: float | None
    flops: float | None
    dtype: str | None
    tokens: int | None
    tags: dict[str, Any]

    @classmethod
    def of(cls, record: PhaseRecord) -> PhasePublic:
        """From a stored record (`db.records`)."""
        return cls(
            id=record.id,
            name=record.name,
            t0_s=record.t0_s,
            t1_s=record.t1_s,
            flops=record.flops,
            dtype=record.flops_dtype,
            tokens=record.tokens,
            tags=record.tags,
        )


# --------------------------------------------------------------------------- ingest


def _inf_text(value: object) -> object:
    return math.inf if value == "inf" else value


def _not_nan_nonnegative(value: float) -> float:
    if math.isnan(value) or value < 0:
        raise ValueError(f'must be a number >= 0 or "inf", got {value!r}')
    return value


_WIRE = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)
NonNegative = Annotated[float, Field(ge=0, le=FINITE_MAX)]
#: A non-negative number, or ``"inf"`` (the wire's spelling of an unbounded band).
Unbounded = Annotated[
    float,
    Field(allow_inf_nan=True),
    BeforeValidator(_inf_text),
    AfterValidator(_not_nan_nonnegative),
]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NO_NUL)]
#: A fraction of time in [0, 1] (a chunk's ``mem_busy_frac``; NaN is refused like any number).
Fraction = Annotated[float, Field(ge=0, le=1)]


class DeviceIn(BaseModel):
    """`meters.wire.DevicePayload`."""

    model_config = _WIRE

    key: Text
    host: Text
    kind: DeviceKind
    index: Count
    uid: Annotated[str, StringConstraints(max_length=96, pattern=_NO_NUL)]
    name: Annotated[str, StringConstraints(max_length=200, pattern=_NO_NUL)]
    power_limit_w: Annotated[float, Field(gt=0, le=FINITE_MAX)] | None
    has_energy_counter: bool
    power_method: DevicePowerMethod
    simulated: bool
    mig: bool = False
    covers: Annotated[list[DeviceKind], Field(max_length=4)] = []


def _sample_column(
    value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Sequence[float]:
    """A JSON list of numbers (validated here), or under ``encoding: "f64le-base64"`` a base64
    string decoded to ``array('d')``, whose values `service.ingest` checks (vectorised)."""
    if info.data.get("encoding") != SAMPLES_F64_BASE64:
        checked: Sequence[float] = handler(value)
        return checked
    if not isinstance(value, str):
        raise ValueError(f"must be a base64 string under encoding {SAMPLES_F64_BASE64!r}")
    try:
        return decode_column(value)
    except ValueError as e:
        raise ValueError(f"{e} (encoding {SAMPLES_F64_BASE64!r})") from e


_COLUMN_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "array", "items": {"type": "number"}},
        {"type": "string", "contentEncoding": "base64", "description": "float64 little-endian"},
    ]
}
#: A sample column: a list (encoding ``json``) or base64 text (``f64le-base64``); in Python a
#: validated ``list`` or a decoded ``array('d')``.
Column = Annotated[Sequence[float], WrapValidator(_sample_column), WithJsonSchema(_COLUMN_SCHEMA)]
NonNegativeColumn = Annotated[
    Sequence[NonNegative], WrapValidator(_sample_column), WithJsonSchema(_COLUMN_SCHEMA)
]


class SamplesIn(BaseModel):
    """`meters.wire.SamplesPayload`: columnar raw samples of one chunk, in either encoding.

    ``encoding`` comes first so the columns' validator can read it.
    """

    model_config = _WIRE

    encoding: Literal["json", "f64le-base64"] = "json"
    t_s: Column
    power_w: NonNegativeColumn
    energy_j: NonNegativeColumn | None = None

    @property
    def binary(self) -> bool:
        """Whether the columns arrived base64-encoded (their values are not checked yet)."""
        return isinstance(self.t_s, array)


class ChunkIn(BaseModel):
    """`meters.wire.ChunkPayload`: one sealed chunk."""

    model_config = _WIRE

    device_key: Text
    seq: Count
    t0_s: NonNegative
    t1_s: NonNegative
    n: Annotated[int, Field(ge=1, le=INT32_MAX)]
    method: EnergyMethod
    energy_j: NonNegative
    energy_low_j: NonNegative
    energy_high_j: Unbounded
    sensor_uncertainty_j: NonNegative
    bound_below_j: NonNegative
    bound_above_j: Unbounded
    min_power_w: NonNegative
    mean_power_w: NonNegative
    max_power_w: NonNegative
    gap_s: NonNegative
    gap_count: Count
    reset_count: Count
    wrap_count: Count
    mem_busy_frac: Fraction | None = Field(
        default=None,
        description="Time-weighted mean fraction of the chunk during which the device's memory "
        "was being read or written, in [0, 1] (NVML utilization.memory, AMD SMI umc_activity); "
        "absent when the device has no such counter.",
    )
    samples: SamplesIn | None = None


class IngestBatchIn(BaseModel):
    """`meters.wire.IngestBatch`: what a meter POSTs to ``/runs/{run_id}/chunks``."""

    model_config = _WIRE

    schema_version: Literal[1] = Field(alias="schema")
    devices: list[DeviceIn]
    chunks: list[ChunkIn]


class ChunkColumnsIn(BaseModel):
    """The chunks of a binary batch (`meters.wire.BATCH_BINARY`): one list per summary field.

    Every list has one entry per chunk (`service.ingest` checks the lengths agree);
    ``sampled`` says the chunk's samples are in the body's blocks, ``counter`` that an
    ``energy_j`` column is among them.
    """

    model_config = _WIRE

    device_key: list[Text]
    seq: list[Count]
    t0_s: list[NonNegative]
    t1_s: list[NonNegative]
    n: list[Annotated[int, Field(ge=1, le=INT32_MAX)]]
    method: list[EnergyMethod]
    energy_j: list[NonNegative]
    energy_low_j: list[NonNegative]
    energy_high_j: list[Unbounded]
    sensor_uncertainty_j: list[NonNegative]
    bound_below_j: list[NonNegative]
    bound_above_j: list[Unbounded]
    min_power_w: list[NonNegative]
    mean_power_w: list[NonNegative]
    max_power_w: list[NonNegative]
    gap_s: list[NonNegative]
    gap_count: list[Count]
    reset_count: list[Count]
    wrap_count: list[Count]
    mem_busy_frac: list[Fraction | None] | None = Field(
        default=None,
        description="Optional: each chunk's memory-busy fraction in [0, 1], null where a chunk "
        "has none; the whole column is absent when no chunk of the batch has one.",
    )
    sampled: list[bool]
    counter: list[bool]


class BinaryBatchHeaderIn(BaseModel):
    """The JSON header of a binary batch (`meters.wire.dumps_binary_batch`)."""

    model_config = _WIRE

    schema_version: Literal[1] = Field(alias="schema")
    devices: list[DeviceIn]
    chunks: ChunkColumnsIn


class ChunkAckPublic(BaseModel):
    """One chunk's fate: ``stored`` now, or a ``duplicate`` of a stored identical chunk."""

    device_key: str
    seq: int
    status: Literal["stored", "duplicate"]


class IngestPublic(BaseModel):
    """The acknowledgement of a batch: per chunk, in request order."""

    run_id: UUID
    stored: int
    duplicates: int
    chunks: list[ChunkAckPublic]
