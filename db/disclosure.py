"""Disclosure exports read from the ledger, each anchored in the chain it was made from.

Three exports, every number a sum of the ledger's *current* entries (a superseded entry is left
out, as in the rollups), none recomputed from factors:

* **EU AI Act** Annex XI §1(2)(d)–(e) and the Commission's GPAI Model Documentation Form, for
  a model (its runs are tagged ``model=<tag>``, or listed by id): training energy in MWh (to
  three significant figures, or "N/A" with the reason), the methodology generated from the
  measurement records, declared training FLOPs, wall-clock and hardware days, the boundary.
* **ESRS E1-5 / E1-6** for a period of the project: energy consumption in MWh and gross
  Scope 2 emissions, location- and market-based, in tCO2e (`db.rollups` period totals).
* **SPDX 3.0.1 AI** ``energyConsumption`` of a model: training, fine-tuning and inference, kWh.

**Anchoring.** Each export names the entries it rests on (seq and hash) and the chain head
(seq and hash) it was read under, so ``thermoledger-server audit verify --project P --anchor
SEQ:HASH`` or ``GET /api/v1/audit/verify?anchor=SEQ:HASH`` proves later that none of them
changed. Runs are split into stages by kind: ``training`` runs (fine-tuning when tagged
``stage=fine-tuning``) and ``inference`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.orm import Session

from thermoledger.accounting import disclosure as fmt
from thermoledger.accounting.carbon import J_PER_KWH

from . import ledger, rollups
from .chain import GENESIS_HASH
from .errors import NotFound
from .models import Device, LedgerHead, Project, RunKind
from .records import RunRecord
from .runs import get_run
from .selection import select_runs

__all__ = [
    "FINETUNING_STAGES",
    "SPDX_CONTEXT",
    "Anchor",
    "esrs",
    "eu_ai_act",
    "spdx",
]

#: The JSON-LD context every SPDX 3.0.1 document names.
SPDX_CONTEXT = "https://spdx.org/rdf/3.0.1/spdx-context.jsonld"
#: Values of a training run's ``stage`` tag that make it fine-tuning.
FINETUNING_STAGES = frozenset({"fine-tuning", "finetuning", "finetune", "fine_tuning"})
_G_PER_T = 1e6


@dataclass(frozen=True, slots=True)
class Anchor:
    """The chain head an export was read under and the entries it rests on."""

    project: str
    head_seq: int
    head_hash: str
    entries: tuple[ledger.LedgerRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form with the commands that verify it."""
        anchors = [f"{self.head_seq}:{self.head_hash}"] if self.head_seq else []
        command = " ".join(
            ["thermoledger-server audit verify", f"--project {self.project}"]
            + [f"--anchor {a}" for a in anchors]
        )
        return {
            "project": self.project,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "entries": [
                {
                    "seq": e.seq,
                    "hash": e.hash,
                    "figure": e.figure,
                    "run_id": None if e.run_id is None else str(e.run_id),
                }
                for e in self.entries
            ],
            "verify": {
                "cli": command,
                "api": "/api/v1/audit/verify" + (f"?anchor={anchors[0]}" if anchors else ""),
                "rule": "each entry's hash is recomputed from its content and the chain is "
                "followed to the head; an entry changed since this export fails as 'modified', "
                "a rewritten history fails the head anchor",
            },
        }


def _anchor(session: Session, project_id: int, entries: Iterable[ledger.LedgerRecord]) -> Anchor:
    slug = session.scalar(sa.select(Project.slug).where(Project.id == project_id))
    if slug is None:
        raise NotFound("project", project_id)
    row = session.execute(
        sa.select(LedgerHead.seq, LedgerHead.hash).where(LedgerHead.project_id == project_id)
    ).one_or_none()
    seq, digest = (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))
    unique = {e.seq: e for e in entries}
    return Anchor(slug, seq, digest, tuple(unique[s] for s in sorted(unique)))


def _model_runs(
    session: Session, project_id: int, model_tag: str | None, run_ids: Sequence[UUID]
) -> list[RunRecord]:
    if run_ids:
        return [get_run(session, project_id=project_id, run_id=r) for r in dict.fromkeys(run_ids)]
    runs = list(select_runs(session, project_id=project_id, tags=[("model", model_tag or "")]).runs)
    if not runs:
        raise NotFound("model", model_tag)
    return runs


def _stage(run: RunRecord) -> str:
    if run.kind == RunKind.INFERENCE:
        return "inference"
    if run.kind == RunKind.TRAINING:
        return "finetuning" if str(run.tags.get("stage", "")) in FINETUNING_STAGES else "training"
    return "other"


def _current(
    session: Session, project_id: int, runs: Sequence[RunRecord]
) -> dict[UUID, dict[str, ledger.LedgerRecord]]:
    """Per run id, its current entries by figure."""
    ids = {r.id for r in runs}
    out: dict[UUID, dict[str, ledger.LedgerRecord]] = {r.id: {} for r in runs}
    for e in ledger.project_entries(session, project_id=project_id):
        if e.run_id in ids and e.superseded_by is None:
            out[e.run_id][e.figure] = e
    return out


def _device_kinds(session: Session, runs: Sequence[RunRecord]) -> set[str]:
    if not runs:
        return set()
    rows = session.scalars(
        sa.select(Device.kind).where(Device.run_id.in_([r.key for r in runs])).distinct()
    )
    return {str(kind) for kind in rows}


def _measurement(entry: ledger.LedgerRecord) -> dict[str, Any]:
    value = entry.provenance.get("measurement")
    return value if isinstance(value, dict) else {}


def _hardware_s(entry: ledger.LedgerRecord) -> float | None:
    """Device-seconds behind an IT-energy entry (measured span × devices, or the estimate's)."""
    estimate = entry.provenance.get("estimate")
    if isinstance(estimate, dict):
        # None for an energy the source stated: it gives no device time.
        value = ((estimate.get("inputs") or {}).get("device_time_s") or {}).get("value")
        return float(value) if isinstance(value, int | float) else None
    m = _measurement(entry)
    t0, t1, devices = m.get("t0_s"), m.get("t1_s"), m.get("devices")
    if not all(isinstance(v, int | float) for v in (t0, t1, devices)):
        return None
    return max(float(t1) - float(t0), 0.0) * float(devices)  # type: ignore[arg-type]


def _na(reason: str) -> dict[str, Any]:
    return {"value": None, "text": "N/A", "reason": reason}


def eu_ai_act(
    session: Session,
    *,
    project_id: int,
    model_tag: str | None = None,
    run_ids: Sequence[UUID] = (),
) -> dict[str, Any]:
    """The EU AI Act / GPAI Model Documentation Form energy section of one model.

    Args:
        session: The caller's session.
        project_id: The project.
        model_tag: The ``model`` tag of its runs (ignored when ``run_ids`` is given).
        run_ids: The runs themselves.

    Raises:
        NotFound: No run carries the tag, or a listed run is not the project's.
    """
    runs = _model_runs(session, project_id, model_tag, run_ids)
    training = [r for r in runs if _stage(r) in ("training", "finetuning")]
    current = _current(session, project_id, training)
    it = [current[r.id]["it_energy"] for r in training if "it_energy" in current[r.id]]
    facility = [
        current[r.id]["facility_energy"] for r in training if "facility_energy" in current[r.id]
    ]
    flops = [current[r.id]["flops"] for r in training if "flops" in current[r.id]]
    pue_kinds = [
        (e.provenance.get("pue") or {}).get("kind") if e.figure == "facility_energy" else None
        for e in facility
    ]
    if len(facility) < len(training):
        pue_kinds.append(None)
    boundary = fmt.boundary_of(_device_kinds(session, training), pue_kinds)
    summed = facility if boundary == "facility" else it
    methods: dict[str, dict[str, float]] = {}
    band_low, band_high, open_band = 0.0, 0.0, False
    for e in it:
        m = _measurement(e)
        for name, part in (m.get("methods") or {}).items():
            slot = methods.setdefault(name, {"devices": 0.0, "energy_j": 0.0})
            slot["devices"] += float(part.get("devices") or 0)
            slot["energy_j"] += float(part.get("energy_j") or 0.0)
        band_low += float(m.get("band_low_j", e.value_si))
        high = m.get("band_high_j")
        open_band = open_band or high is None
        band_high += float(high) if high is not None else 0.0
    subject = f"training of model {model_tag}" if not run_ids else "training runs listed"
    pues = [float(p["value"]) for e in facility if isinstance(p := e.provenance.get("pue"), dict)]
    methodology = fmt.methodology_text(
        subject=subject,
        runs=len(training),
        runs_with_energy=len(it),
        methods=methods,
        boundary=boundary,
        pue_values=pues,
        band_low_j=band_low if it else None,
        band_high_j=None if open_band else band_high,
        estimated_runs=sum(1 for e in it if e.provenance.get("origin") == "estimate"),
        simulated_runs=sum(1 for e in it if _measurement(e).get("simulated")),
    )
    if not training:
        energy = _na("no training run carries the model's tag")
    elif len(summed) < len(training):
        lacking = len(training) - len(summed)
        energy = _na(
            f"{lacking} of {len(training)} training run(s) have no ledgered "
            f"{'facility ' if boundary == 'facility' else ''}energy (not metered, or still "
            "running): a partial sum would understate it"
        )
    else:
        total_mwh = math.fsum(e.value_si for e in summed) / fmt.J_PER_MWH
        energy = {"value": total_mwh, "text": fmt.sig_figs(total_mwh, 3), "reason": None}
    if training and len(flops) == len(training):
        flop_total = math.fsum(e.value_si for e in flops)
        flops_doc: dict[str, Any] = {"value": flop_total, "text": f"{flop_total:.3e}"}
        flops_doc["reason"] = None
    else:
        flops_doc = _na(
            f"{len(training) - len(flops)} of {len(training)} training run(s) declared no FLOPs"
        )
    ended = [(r.started_at, r.ended_at) for r in training if r.ended_at is not None]
    hardware = [_hardware_s(e) for e in it]
    hardware_days = (
        math.fsum(h for h in hardware if h is not None) / 86_400.0
        if it and len(it) == len(training) and all(h is not None for h in hardware)
        else None
    )
    anchor = _anchor(session, project_id, [*it, *facility, *flops])
    return {
        "standard": "EU AI Act Annex XI §1(2)(d)-(e); GPAI Model Documentation Form",
        "model": model_tag,
        "runs": [str(r.id) for r in training],
        "training_energy_mwh": energy,
        "methodology": methodology,
        "boundary": {
            "kind": boundary,
            "pue": sorted(set(pues)) if boundary == "facility" else None,
        },
        "training_flops": flops_doc,
        "wall_clock_days": fmt.union_days(ended) if ended else None,
        "hardware_days": hardware_days,
        "anchor": anchor.to_dict(),
    }


def esrs(
    session: Session,
    *,
    project_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """ESRS E1-5 (energy, MWh) and E1-6 (gross Scope 2, tCO2e) of the project for a period.

    The period totals are `db.rollups.rollup_project`'s monthly rows added up: a total is
    available only when every month's is (every run has the figure); otherwise it is
    ``None`` with the months' reasons, and the partial sum is shown apart.
    """
    rows = rollups.rollup_project(
        session, project_id=project_id, period="month", start=start, end=end
    )

    def covered(name: str, scale: float) -> dict[str, Any]:
        sums = [getattr(row, name) for row in rows]
        reasons = sorted({s.unavailable for s in sums if s.unavailable is not None})
        partial = math.fsum(s.covered_value for s in sums) / scale
        if not rows:
            reasons = ["no ledger entries in the period"]
        return {
            "value": None if reasons else partial,
            "covered_value": partial if any(s.entries for s in sums) else None,
            "runs_covered": sum(s.runs_covered for s in sums),
            "reason": "; ".join(reasons) if reasons else None,
        }

    seqs = {seq for row in rows for seq in row.entries}
    entries = [e for e in ledger.project_entries(session, project_id=project_id) if e.seq in seqs]
    it_mwh = math.fsum(row.it_energy_j for row in rows) / fmt.J_PER_MWH
    return {
        "standard": "ESRS E1 (Commission Delegated Regulation (EU) 2023/2772): E1-5, E1-6",
        "from": None if start is None else start.isoformat(),
        "to": None if end is None else end.isoformat(),
        "runs": sum(row.runs for row in rows),
        "e1_5": {
            "total_energy_consumption_mwh": covered("facility_energy", fmt.J_PER_MWH),
            "it_energy_mwh": it_mwh if rows else None,
            "boundary": "facility energy: IT energy × the PUE each run was ledgered with",
            "energy_mix": "not disclosed: the ledger holds no split by source (fossil, nuclear, "
            "renewable)",
        },
        "e1_6": {
            "gross_scope2_location_based_tco2e": covered("co2e_location", _G_PER_T),
            "gross_scope2_market_based_tco2e": covered("co2e_market", _G_PER_T),
        },
        "anchor": _anchor(session, project_id, entries).to_dict(),
    }


def _iso_z(when: datetime) -> str:
    """SPDX DateTime: UTC, seconds, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spdx(
    session: Session, *, project_id: int, model_tag: str, now: datetime
) -> tuple[dict[str, Any], Anchor]:
    """An SPDX 3.0.1 JSON-LD document: one ``ai_AIPackage`` with its ``ai_energyConsumption``.

    Training, fine-tuning and inference each get one ``ai_EnergyConsumptionDescription``: the
    IT energy (kWh) of the stage's runs with a ledgered figure, when any has one. The anchor
    rides in an ``Annotation`` on the package (and is returned for the response's headers).

    Raises:
        NotFound: No run carries the tag.
    """
    runs = _model_runs(session, project_id, model_tag, ())
    current = _current(session, project_id, runs)
    anchor_entries: list[ledger.LedgerRecord] = []
    consumption: dict[str, Any] = {"type": "ai_EnergyConsumption"}
    for stage, prop in (
        ("training", "ai_trainingEnergyConsumption"),
        ("finetuning", "ai_finetuningEnergyConsumption"),
        ("inference", "ai_inferenceEnergyConsumption"),
    ):
        it = [
            current[r.id]["it_energy"]
            for r in runs
            if _stage(r) == stage and "it_energy" in current[r.id]
        ]
        if not it:
            continue
        anchor_entries += it
        kwh = math.fsum(e.value_si for e in it) / J_PER_KWH
        consumption[prop] = [
            {
                "type": "ai_EnergyConsumptionDescription",
                "ai_energyQuantity": repr(kwh),
                "ai_energyUnit": "kilowattHour",
            }
        ]
    anchor = _anchor(session, project_id, anchor_entries)
    base = f"urn:thermoledger:{quote(anchor.project, safe='')}"
    package_id = f"{base}:model:{quote(model_tag, safe='')}"
    agent_id = f"{base}:agent"
    created = _iso_z(now)
    package: dict[str, Any] = {
        "type": "ai_AIPackage",
        "spdxId": package_id,
        "creationInfo": "_:creationinfo",
        "name": model_tag,
        "software_primaryPurpose": "model",
        "ai_energyConsumption": consumption,
    }
    built = [r.ended_at for r in runs if _stage(r) == "training" and r.ended_at is not None]
    if built:
        package["builtTime"] = _iso_z(max(built))
    anchor_doc = anchor.to_dict()
    statement = (
        f"Energy from the thermoledger ledger of project {anchor.project}: IT energy (kWh) of "
        f"the model's runs, summed per stage. Chain head seq {anchor.head_seq} hash "
        f"{anchor.head_hash}; entries "
        + ", ".join(f"{e['seq']}:{e['hash']}" for e in anchor_doc["entries"])
        + f". Verify: {anchor_doc['verify']['cli']}"
    )
    document = {
        "@context": SPDX_CONTEXT,
        "@graph": [
            {
                "type": "CreationInfo",
                "@id": "_:creationinfo",
                "created": created,
                "createdBy": [agent_id],
                "specVersion": "3.0.1",
            },
            {
                "type": "Organization",
                "spdxId": agent_id,
                "creationInfo": "_:creationinfo",
                "name": f"thermoledger project {anchor.project}",
            },
            {
                "type": "SpdxDocument",
                "spdxId": f"{package_id}:document",
                "creationInfo": "_:creationinfo",
                "rootElement": [package_id],
                "element": [package_id, agent_id, f"{package_id}:anchor"],
            },
            package,
            {
                "type": "Annotation",
                "spdxId": f"{package_id}:anchor",
                "creationInfo": "_:creationinfo",
                "annotationType": "other",
                "subject": package_id,
                "statement": statement,
            },
        ],
    }
    return document, anchor
