"""Emission-factor and tariff versions, and the project's region and PUE.

Who may do what: the **operator** (bootstrap token) adds and closes *shared* versions; a
project's **admin** token adds and closes the project's own (which override shared ones for
that project) and sets the project's region and PUE; **read** lists and looks up. Versions of
one key never overlap (409 naming the version in the way), and nothing already in the ledger
changes when a version is added or closed (`db.factors`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from thermoledger.accounting.carbon import Pue, default_pue
from thermoledger.db import factors
from thermoledger.db.errors import InvalidInput, NotFound
from thermoledger.db.models import FactorBasis, FactorRate, Scope
from thermoledger.db.types import utcnow

from ..auth import Principal
from ..deps import AdminFirstRoute, AdminPrincipal, PrincipalDep, ReadTenant, SessionDep
from ..ledger_schemas import (
    INTENSITY_MAX_G_PER_KWH,
    PRICE_MAX_USD_PER_KWH,
    REGION_PATTERN,
    AccountingPublic,
    AccountingSet,
    FactorCreate,
    FactorList,
    FactorPublic,
    Instant,
    TariffCreate,
    TariffPublic,
    VersionClose,
    parse_edge_quantity,
)

# Writes need the admin scope (or the operator), refused before the body is read.
router = APIRouter(tags=["factors"], route_class=AdminFirstRoute)


def _owner(principal: Principal, scope: Scope) -> int | None:
    """The project whose versions the principal acts on; None (shared) for the operator."""
    if principal.is_operator:
        return None
    return principal.require(scope).id


RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
RegionQuery = Annotated[
    str | None, Query(pattern=REGION_PATTERN, description="default: the project's region")
]
AtQuery = Annotated[Instant | None, Query(description="default: now")]


def _in_range(
    value: float, per_kwh: float, low: float, high: float, what: str, field: str
) -> float:
    """``value`` as given, if its per-kWh equivalent lies in [low, high] (else 422)."""
    if not low <= per_kwh <= high:
        raise InvalidInput.one(field, f"{per_kwh!r} {what} lies outside [{low:g}, {high:g}]")
    return value


# --------------------------------------------------------------------------- emission factors


@router.post(
    "/factors",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "the window overlaps a version of the same key"}},
)
def add_factor(body: FactorCreate, principal: AdminPrincipal, session: SessionDep) -> FactorPublic:
    """Add an emission-factor version (operator: shared; project admin: the project's own)."""
    project_id = _owner(principal, Scope.ADMIN)
    quantity, unit = parse_edge_quantity(body.intensity, "carbon_intensity", field="intensity")
    per_kwh = float(quantity.to("gCO2e/kWh").magnitude)
    version = factors.add_factor(
        session,
        project_id=project_id,
        region=body.region,
        basis=body.basis,
        rate=body.rate,
        value=_in_range(
            float(quantity.magnitude),
            per_kwh,
            0.0,
            INTENSITY_MAX_G_PER_KWH,
            "gCO2e/kWh (an emission factor is ≥ 0 and physical)",
            "intensity",
        ),
        unit=unit,
        valid_from=body.valid_from,
        valid_to=body.valid_to,
        source=body.source,
        year=body.year,
    )
    return FactorPublic.of(version)


@router.get("/factors")
def list_factors(
    principal: PrincipalDep,
    session: SessionDep,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    basis: FactorBasis | None = None,
) -> FactorList:
    """Stored versions (shared, and the project's own) and the built-in defaults."""
    project_id = _owner(principal, Scope.READ)
    versions = factors.list_factors(session, project_id=project_id, region=region, basis=basis)
    builtin = [
        f
        for f in factors.builtin_factors()
        if (region is None or f.region == factors.normalize_region(region))
        and (basis is None or f.basis == basis)
    ]
    return FactorList(
        items=[FactorPublic.of(v) for v in versions],
        builtin=[FactorPublic.of(v) for v in builtin],
    )


@router.get("/factors/lookup", responses={404: {"description": "no factor applies"}})
def lookup_factor(
    tenant: ReadTenant,
    session: SessionDep,
    basis: FactorBasis = FactorBasis.LOCATION,
    rate: FactorRate = FactorRate.AVERAGE,
    region: RegionQuery = None,
    at: AtQuery = None,
) -> FactorPublic:
    """The version that applies to a region at an instant (the project's, shared, built-in)."""
    region = region or _project_region(session, tenant.id)
    version = factors.find_factor(
        session, project_id=tenant.id, region=region, basis=basis, rate=rate, at=at or utcnow()
    )
    if version is None:
        raise NotFound(f"{basis.value}/{rate.value} emission factor for region", region)
    return FactorPublic.of(version)


@router.post("/factors/{factor_id}/close", responses={409: {"description": "already closed"}})
def close_factor(
    factor_id: RowId, body: VersionClose, principal: AdminPrincipal, session: SessionDep
) -> FactorPublic:
    """End an open-ended version (so that a newer one can follow it)."""
    version = factors.close_factor(
        session,
        factor_id=factor_id,
        project_id=_owner(principal, Scope.ADMIN),
        valid_to=body.valid_to,
    )
    return FactorPublic.of(version)


# --------------------------------------------------------------------------- tariffs


@router.post(
    "/tariffs",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "the window overlaps a version of the same key"}},
)
def add_tariff(body: TariffCreate, principal: AdminPrincipal, session: SessionDep) -> TariffPublic:
    """Add a tariff version (operator: shared; project admin: the project's own)."""
    project_id = _owner(principal, Scope.ADMIN)
    quantity, unit = parse_edge_quantity(body.price, "tariff", field="price")
    per_kwh = float(quantity.to("USD/kWh").magnitude)
    version = factors.add_tariff(
        session,
        project_id=project_id,
        region=body.region,
        value=_in_range(
            float(quantity.magnitude),
            per_kwh,
            -PRICE_MAX_USD_PER_KWH,
            PRICE_MAX_USD_PER_KWH,
            "USD/kWh",
            "price",
        ),
        unit=unit,
        valid_from=body.valid_from,
        valid_to=body.valid_to,
        source=body.source,
        year=body.year,
    )
    return TariffPublic.of(version)


@router.get("/tariffs")
def list_tariffs(
    principal: PrincipalDep,
    session: SessionDep,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
) -> list[TariffPublic]:
    """Stored tariff versions (shared, and the project's own)."""
    project_id = _owner(principal, Scope.READ)
    return [
        TariffPublic.of(v)
        for v in factors.list_tariffs(session, project_id=project_id, region=region)
    ]


@router.get("/tariffs/lookup", responses={404: {"description": "no tariff applies"}})
def lookup_tariff(
    tenant: ReadTenant,
    session: SessionDep,
    region: RegionQuery = None,
    at: AtQuery = None,
) -> TariffPublic:
    """The tariff version that applies to a region at an instant (the project's, else shared)."""
    region = region or _project_region(session, tenant.id)
    version = factors.find_tariff(session, project_id=tenant.id, region=region, at=at or utcnow())
    if version is None:
        raise NotFound("tariff for region", region)
    return TariffPublic.of(version)


@router.post("/tariffs/{tariff_id}/close", responses={409: {"description": "already closed"}})
def close_tariff(
    tariff_id: RowId, body: VersionClose, principal: AdminPrincipal, session: SessionDep
) -> TariffPublic:
    """End an open-ended tariff version."""
    version = factors.close_tariff(
        session,
        tariff_id=tariff_id,
        project_id=_owner(principal, Scope.ADMIN),
        valid_to=body.valid_to,
    )
    return TariffPublic.of(version)


# --------------------------------------------------------------------------- project settings


def _project_region(session: SessionDep, project_id: int) -> str:
    region = factors.get_accounting(session, project_id=project_id).region
    if region is None:
        raise InvalidInput.one(
            "region", "give a region: the project has none configured (PUT /api/v1/accounting)"
        )
    return region


def _pue(body: AccountingSet) -> Pue:
    if isinstance(body.pue, str):
        try:
            return default_pue(body.pue)
        except LookupError as e:
            raise InvalidInput.one("pue", str(e)) from e
    return Pue.measured(body.pue.value, source=body.pue.source, year=body.pue.year)


@router.get("/accounting")
def get_accounting(tenant: ReadTenant, session: SessionDep) -> AccountingPublic:
    """The project's region and PUE (region null: not configured, so no carbon is derived)."""
    return AccountingPublic.of(factors.get_accounting(session, project_id=tenant.id), tenant.slug)


@router.put("/accounting")
def set_accounting(
    body: AccountingSet, principal: AdminPrincipal, session: SessionDep
) -> AccountingPublic:
    """Set the project's region and PUE (admin). Figures already ledgered keep theirs."""
    tenant = principal.require(Scope.ADMIN)
    config = factors.set_accounting(
        session, project_id=tenant.id, region=body.region, pue=_pue(body)
    )
    return AccountingPublic.of(config, tenant.slug)
