"""Response schemas of the run report, and the accounting records it shares with plans and
amortisation answers (`service.economics_schemas`).

The accounting core builds its results as frozen dataclasses with ``to_dict``; the service turns
each answer into one of these models **once** (`RunReportPublic.model_validate` of the report's
mapping), and everything downstream — the JSON route, the pages, the CSV, the comparable runs
of a plan — reads the model's attributes. The JSON a client gets is the model dumped, key for key
what the mapping held: the models forbid keys they do not declare, so a figure the core adds
without a field here fails the tests instead of vanishing from the answer.

Every bare number has its unit in its name (``energy_j``, ``energy_kwh``, ``mean_power_w``,
``co2e_g``, ``usd``); a band is ``energy_low_j`` … ``energy_high_j``, with ``energy_high_j``
None when the band is unbounded above (a counter reset without a known power limit). A figure
that is not available is None with a reason beside it (``reason``, ``energy_reason``), never 0.
Open-ended provenance (a factor version's record as the ledger froze it, a bound's assumptions)
stays a JSON object.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AccountingBasisPublic",
    "AccountingContextRecord",
    "CarbonRecord",
    "CostRecord",
    "EmissionFactorRecord",
    "HardwarePriceRecord",
    "PueRecord",
    "ReportCarbonPublic",
    "ReportCostPublic",
    "RunReportPublic",
    "TariffRecord",
]

#: Responses declare every key they carry (see the module docstring).
_OUT = ConfigDict(extra="forbid")

LocationT = TypeVar("LocationT")

# Fields that recur, each described once (units in the names and the descriptions).
EnergyJ = Annotated[float, Field(description="Energy, J (IT energy as metered).")]
EnergyKwh = Annotated[float, Field(description="The same energy in kWh (J / 3.6e6).")]
DeviceKindName = Literal["gpu", "cpu", "dram", "other"]
EnergyLowJ = Annotated[float, Field(description="Low end of the energy's uncertainty band, J.")]
EnergyHighJ = Annotated[
    float | None,
    Field(description="High end of the energy's uncertainty band, J; None when unbounded above."),
]
Notes = Annotated[list[str], Field(description="Caveats a reader must see, in plain words.")]
Reason = Annotated[
    str | None, Field(description="Why the figure is not available; None when it is.")
]
Status = Annotated[
    Literal["available", "not_available"],
    Field(description="Whether the figure is available (else it is None, with the reason)."),
]


# --------------------------------------------------------------------------------------------
# Accounting records: PUE, grid factor, tariff, hardware price, cost, carbon


class PueRecord(BaseModel):
    """A power usage effectiveness with its provenance."""

    model_config = _OUT

    value: float = Field(description="PUE = facility energy / IT energy (dimensionless, ≥ 1).")
    name: str = Field(description="Built-in name (``typical``, ``hyperscale``…) or ``measured``.")
    kind: str = Field(
        description="``published``, ``survey``, ``assumption``, ``definition`` or ``measured``."
    )
    source: str = Field(description="Where the value comes from.")
    year: int | None = Field(description="Year the value refers to, if known.")
    note: str | None = Field(description="A caveat carried into reports.")


class EmissionFactorRecord(BaseModel):
    """A grid emission factor as the accounting core applied it."""

    model_config = _OUT

    region: str = Field(description="Grid region (``WORLD``, ISO 3166-1 code, grid zone).")
    intensity_g_per_kwh: float = Field(description="Carbon intensity, gCO2e per kWh.")
    kind: str = Field(description="``location``, ``market``, ``average`` or ``marginal``.")
    source: str = Field(description="Where the factor comes from (and which version).")
    year: int | None = Field(description="Year the factor refers to.")
    valid_from: str | None = Field(description="First day it applies (ISO date), if bounded.")
    valid_to: str | None = Field(description="Last day it applies (ISO date), if bounded.")
    basis: str | None = Field(description="What the factor measures (e.g. generation).")
    note: str | None = Field(description="A caveat carried into reports.")


class ExchangeRateRecord(BaseModel):
    """The explicit, dated rate a price in another currency was converted with."""

    model_config = _OUT

    currency: str = Field(description="ISO 4217 code of the original price.")
    usd_per_unit: float = Field(description="USD per unit of ``currency``.")
    as_of: str = Field(description="Date of the rate (ISO).")
    source: str = Field(description="Where the rate comes from.")


class TariffRecord(BaseModel):
    """An electricity price with its provenance."""

    model_config = _OUT

    usd_per_kwh: float = Field(description="Price, USD per kWh (negative for a wholesale dip).")
    source: str = Field(description="Where the price comes from (and which version).")
    region: str | None = Field(description="Where it applies, if stated.")
    valid_from: str | None = Field(description="First day it applies (ISO date), if bounded.")
    valid_to: str | None = Field(description="Last day it applies (ISO date), if bounded.")
    exchange_rate: ExchangeRateRecord | None = Field(
        description="The rate used when the price was given in another currency."
    )


class OwnedHardwareRecord(BaseModel):
    """A purchased device, amortised straight-line over its service life."""

    model_config = _OUT

    basis: Literal["amortised"] = Field(description="How the hourly price was obtained.")
    usd_per_device_hour: float = Field(description="Price per device-hour, USD.")
    purchase_usd: float = Field(description="Price of one device, USD.")
    lifetime_h: float = Field(description="Service life, hours.")
    utilisation: float = Field(description="Fraction of the lifetime doing billable work.")
    source: str = Field(description="Where the price comes from.")
    exchange_rate: ExchangeRateRecord | None = Field(description="Currency conversion, if any.")


class CloudPriceRecord(BaseModel):
    """A rental price per device-hour."""

    model_config = _OUT

    basis: Literal["cloud"] = Field(description="How the hourly price was obtained.")
    usd_per_device_hour: float = Field(description="Price per device-hour, USD.")
    source: str = Field(description="Where the price comes from.")
    valid_from: str | None = Field(description="First day it applies (ISO date), if bounded.")
    valid_to: str | None = Field(description="Last day it applies (ISO date), if bounded.")
    exchange_rate: ExchangeRateRecord | None = Field(description="Currency conversion, if any.")


HardwarePriceRecord = Annotated[
    OwnedHardwareRecord | CloudPriceRecord, Field(discriminator="basis")
]


class CostRecord(BaseModel):
    """What a run costs (or a plan would), part by part, with the prices used."""

    model_config = _OUT

    total_usd: float | None = Field(
        description="Sum of the parts that were priced, USD; None when no part is priced "
        "(never 0 for 'not priced')."
    )
    energy_usd: float | None = Field(description="Energy cost, USD; None when not priced.")
    hardware_usd: float | None = Field(description="Hardware cost, USD; None when not priced.")
    energy_it_j: EnergyJ
    energy_billed_j: float = Field(description="Energy the tariff applies to (IT × PUE), J.")
    energy_billed_kwh: float = Field(description="The billed energy in kWh.")
    pue: PueRecord | None = Field(description="The PUE applied; None: IT energy priced as is.")
    tariff: TariffRecord | None = Field(description="The tariff; None when energy is not priced.")
    device_hours: float = Field(
        description="Accelerator device-hours used (priced when a hardware price is given), h."
    )
    hardware: HardwarePriceRecord | None = Field(description="The hourly hardware price, if any.")
    notes: Notes


class ReportCostPublic(CostRecord):
    """A run's cost on its accounting basis, with whether (and why not) its energy is priced."""

    energy_status: Status
    energy_reason: Reason
    total_status: Status = "available"
    total_reason: Reason = None


class LocationBasedRecord(BaseModel):
    """Location-based Scope 2 emissions (grid average where the energy was drawn)."""

    model_config = _OUT

    co2e_g: float = Field(description="Location-based emissions, gCO2e.")
    factor: EmissionFactorRecord


class LocationAvailable(BaseModel):
    """A location-based figure that is available."""

    model_config = _OUT

    status: Literal["available"] = Field(description="The figure is available.")
    co2e_g: float = Field(description="Location-based emissions, gCO2e.")
    factor: EmissionFactorRecord


class LocationNotAvailable(BaseModel):
    """No location-based figure (no region configured, no factor version valid), and why."""

    model_config = _OUT

    status: Literal["not_available"] = Field(description="The figure is not available.")
    co2e_g: None = Field(description="Always None: never filled in from a default.")
    factor: None = Field(description="Always None.")
    reason: str = Field(description="Why no grid-average factor applies.")


class MarketBasedRecord(BaseModel):
    """Market-based Scope 2 emissions (contractual instruments), or why there are none."""

    model_config = _OUT

    status: Status
    co2e_g: float | None = Field(
        description="Market-based emissions, gCO2e; None if not available."
    )
    basis: str | None = Field(description="How the figure was derived (instrument, residual mix).")
    coverage: float | None = Field(description="Fraction of facility energy the instrument covers.")
    factor: EmissionFactorRecord | None = Field(description="The contractual factor, if any.")
    residual_mix_factor: EmissionFactorRecord | None = Field(
        description="The residual-mix factor for the uncovered part, if any."
    )
    reason: Reason


class _Scope2(BaseModel, Generic[LocationT]):
    model_config = _OUT

    energy_it_j: EnergyJ
    energy_facility_j: float = Field(description="Facility energy = IT energy × PUE, J.")
    energy_facility_kwh: float = Field(description="Facility energy, kWh.")
    pue: PueRecord
    location_based: LocationT
    market_based: MarketBasedRecord
    notes: Notes


class CarbonRecord(_Scope2[LocationBasedRecord]):
    """GHG Protocol Scope 2 emissions, location- and market-based side by side."""


class ReportCarbonPublic(
    _Scope2[Annotated[LocationAvailable | LocationNotAvailable, Field(discriminator="status")]]
):
    """A run's Scope 2 emissions on its accounting basis; the location-based figure says whether
    it is available (``status``), and why not."""


# --------------------------------------------------------------------------------------------
# The accounting basis


class CorrectionRecord(BaseModel):
    """A later ledger entry that supersedes a figure of the run's frozen derivation."""

    model_config = _OUT

    figure: str = Field(description="The figure corrected (``it_energy``, ``co2e_location``…).")
    seq: int = Field(description="Seq of the correcting entry.")
    supersedes: int | None = Field(description="Seq of the entry it supersedes.")
    value_si: float = Field(description="The corrected value, in the figure's SI unit.")
    note: str | None = Field(description="The correction's note.")


class AccountingContextRecord(BaseModel):
    """Region, PUE and the factor and tariff versions figures are derived with."""

    model_config = _OUT

    at: str = Field(description="The instant the versions were resolved at (ISO, UTC).")
    region: str | None = Field(description="Grid region; None when none is configured.")
    pue: PueRecord
    location_factor: dict[str, Any] | None = Field(
        description="The location-based factor version's record (value, unit, source, window)."
    )
    market_factor: dict[str, Any] | None = Field(
        description="The market-based factor version's record, if one applies."
    )
    tariff: dict[str, Any] | None = Field(
        description="The tariff version's record, if one applies."
    )
    unavailable: dict[str, str] = Field(description="Figure → why it cannot be derived.")
    statement: list[str] = Field(description="The basis as lines a reader can check.")


class AccountingBasisPublic(AccountingContextRecord):
    """A run's accounting basis: the ledger's frozen one, or the one resolved at its end."""

    frozen: bool = Field(description="True when read from the ledger's run-end entries.")
    source: Literal["ledger", "resolved"] = Field(description="Where the basis comes from.")
    ledger_entries: dict[str, int] = Field(description="Figure → seq of the run-end derivation.")
    ledgered_energy_j: float | None = Field(
        description="IT energy the ledger froze, J; None when not frozen."
    )
    corrections: list[CorrectionRecord]
    notes: Notes


# --------------------------------------------------------------------------------------------
# The run report


class ReportRun(BaseModel):
    """Who the run is."""

    model_config = _OUT

    id: str = Field(description="The run's id (UUID).")
    name: str
    kind: str = Field(description="``training``, ``inference``, ``eval`` or ``other``.")
    status: str = Field(description="``running``, ``finished``, ``failed`` or ``lost``.")
    simulated: bool = Field(description="Whether any device is simulated (not a measurement).")


class EnergyBand(BaseModel):
    """An energy figure with its uncertainty band."""

    model_config = _OUT

    energy_j: EnergyJ
    energy_kwh: EnergyKwh
    energy_low_j: EnergyLowJ
    energy_high_j: EnergyHighJ


class DeviceEnergy(BaseModel):
    """One device's measured energy over the run, and how it was measured."""

    model_config = _OUT

    key: str = Field(description="Stable key of the device within the run.")
    host: str
    kind: DeviceKindName = Field(
        description="``gpu`` (a board or a GPU+CPU module), ``cpu`` (a package or socket), "
        "``dram`` or ``other``."
    )
    index: int = Field(description="Device index on its host.")
    name: str = Field(description="Name as the vendor reports it.")
    covers: list[DeviceKindName] = Field(
        description="Other kinds on its host whose energy this device's figures include "
        "(a GH200-class module: ``cpu``); those devices are left out of every total."
    )
    counted: bool = Field(
        description="Whether the totals add this device; False when another device on its "
        "host covers its kind (its energy is inside that device's figure)."
    )
    covered_by: str | None = Field(
        description="Key of the device whose figure includes this one's; None when counted."
    )
    catalog_id: str | None = Field(description="Hardware catalog id; None when not catalogued.")
    method: str = Field(
        description="How the energy was measured: ``counter``, ``power_avg``, "
        "``power_instant``, ``estimate`` or ``mixed``."
    )
    simulated: bool = Field(description="Whether the device is simulated.")
    energy_j: EnergyJ
    energy_kwh: EnergyKwh
    energy_low_j: EnergyLowJ
    energy_high_j: EnergyHighJ
    mean_power_w: float = Field(description="Energy over the measured span, W.")
    peak_power_w: float = Field(description="Highest power reading, W.")
    duration_s: float = Field(description="Measured span, s.")
    gap_s: float = Field(description="Seconds inside sampling gaps.")
    gap_count: int = Field(description="Number of sampling gaps.")
    reset_count: int = Field(description="Counter resets (driver reloads) seen.")
    samples: int = Field(description="Number of samples.")


class PhaseEnergy(BaseModel):
    """A named window of the run with its energy (all devices) and declared work."""

    model_config = _OUT

    name: str
    t0_s: float = Field(description="Start, unix s.")
    t1_s: float = Field(description="End, unix s.")
    duration_s: float = Field(description="t1_s − t0_s, s.")
    energy_j: EnergyJ
    energy_kwh: EnergyKwh
    energy_low_j: EnergyLowJ
    energy_high_j: EnergyHighJ
    flops: float | None = Field(description="FLOPs declared for the phase, if any.")
    tokens: float | None = Field(description="Tokens declared for the phase, if any.")
    flop_per_j: float | None = Field(description="flops / energy_j, FLOP/J; None without FLOPs.")


class KindEnergy(EnergyBand):
    """The devices of one kind on one host: their energy, and whether the node total adds it."""

    devices: int = Field(description="How many devices of this kind the host has.")
    counted: bool = Field(
        description="Whether the node total adds this kind; False when a device of another "
        "kind on the host covers it (shown, never added again)."
    )
    covered_by: list[DeviceKindName] = Field(
        description="The kinds whose devices' figures include this one's (empty when counted)."
    )


class NodeEnergy(BaseModel):
    """One host (node): its total, each joule once, and its per-kind subtotals."""

    model_config = _OUT

    host: str
    total: EnergyBand = Field(description="The node's energy: its counted devices.")
    by_kind: dict[DeviceKindName, KindEnergy] = Field(
        description="Kind → its devices on this host, in the order gpu, cpu, dram, other."
    )


class ReportEnergy(BaseModel):
    """The run's energy: total, by device, host, kind, node and phase.

    Totals add each joule once: a device covered by another on its host (``counted`` False)
    is listed, and its kind shown per node, but never added to ``total``, ``by_host``,
    ``by_kind``, a node's ``total`` or a phase.
    """

    model_config = _OUT

    total: EnergyBand
    mean_power_w: float | None = Field(
        description="Total energy over the run's duration, W; None for a run of no duration."
    )
    by_device: list[DeviceEnergy]
    by_host: dict[str, EnergyBand] = Field(
        description="Host → its counted devices' energy (each node's total)."
    )
    by_kind: dict[DeviceKindName, EnergyBand] = Field(
        description="Kind → the counted devices of that kind on every host (GPU, CPU, DRAM "
        "subtotals); they add up to ``total``."
    )
    by_node: list[NodeEnergy] = Field(description="Per host: its total and per-kind subtotals.")
    by_phase: list[PhaseEnergy]


class ReportWork(BaseModel):
    """The work the job declared (or the FLOPs estimated from it)."""

    model_config = _OUT

    flops: float | None = Field(description="FLOPs done; None when neither declared nor estimable.")
    flops_source: str | None = Field(description="``declared`` or how they were estimated.")
    dtype: str = Field(description="Precision the FLOPs ran at.")
    tokens: float | None = Field(description="Tokens processed, if declared.")
    model_params: float | None = Field(description="Model size N (parameters), if declared.")


class ReportEfficiency(BaseModel):
    """Measured efficiency; None where the work it needs was not declared."""

    model_config = _OUT

    flop_per_j: float | None = Field(description="FLOPs / energy, FLOP/J.")
    j_per_token: float | None = Field(description="Energy / tokens, J per token.")
    mfu: float | None = Field(description="Model FLOPs utilisation against the dense peak (0–1).")


class BoundInputs(BaseModel):
    """What the bounds were computed from."""

    model_config = _OUT

    energy_j: EnergyJ
    flops: float = Field(description="Work, FLOP.")
    dtype: str
    duration_s: float = Field(description="Wall time of the measured window, s.")
    devices: dict[str, float] = Field(description="Catalog id → device count.")
    bytes_moved: float | None = Field(description="Memory traffic, bytes, if known.")
    temperature_k: float | None = Field(description="Measured temperature, K, if given.")


class LandauerRecord(BaseModel):
    """The Landauer floor: k_B·T·ln 2 per bit erased."""

    model_config = _OUT

    bound: Literal["landauer"]
    bound_j: float = Field(description="Least energy for the run's FLOPs, J.")
    bound_j_per_flop: float = Field(description="The floor per FLOP, J/FLOP.")
    bound_flop_per_j: float = Field(description="Its inverse, the most FLOP per J.")
    bits_per_flop: float = Field(description="Bits erased per FLOP assumed.")
    temperature_k: float = Field(description="Temperature used, K.")
    measured_j: float | None = Field(description="Measured energy, J.")
    orders_of_magnitude: float | None = Field(description="log10(measured_j / bound_j).")
    assumptions: dict[str, Any]


class HardwareRooflineRecord(BaseModel):
    """The hardware roofline: peak FLOP/s and rated FLOP/J of the run's devices."""

    model_config = _OUT

    bound: Literal["hardware_roofline"]
    peak_flop_per_s: float = Field(description="Dense peak at the dtype, all devices, FLOP/s.")
    achieved_flop_per_s: float = Field(description="FLOPs / duration, FLOP/s.")
    mfu: float = Field(description="achieved / peak.")
    attainable_flop_per_s: float = Field(description="min(peak, bandwidth × intensity), FLOP/s.")
    intensity_flop_per_byte: float | None = Field(description="Arithmetic intensity, FLOP/byte.")
    ridge_point_flop_per_byte: float = Field(description="peak / bandwidth, FLOP/byte.")
    fraction_of_attainable: float = Field(description="achieved / attainable.")
    peak_flop_per_j: float | None = Field(description="Σpeak / ΣTDP, FLOP/J; None without TDP.")
    bound_j_per_flop: float | None = Field(description="1 / peak_flop_per_j, J/FLOP.")
    bound_j: float | None = Field(description="FLOPs at peak FLOP/J, J.")
    measured_j: float | None = Field(description="Measured energy, J.")
    measured_flop_per_j: float | None = Field(description="FLOPs / measured energy, FLOP/J.")
    efficiency_ratio: float | None = Field(description="measured FLOP/J / peak FLOP/J.")
    orders_of_magnitude: float | None = Field(description="log10(measured_j / bound_j).")
    assumptions: dict[str, Any]


class EnergyRooflineRecord(BaseModel):
    """The energy roofline (Choi et al. 2013): E = W·ε_flop + Q·ε_mem + π0·T."""

    model_config = _OUT

    bound: Literal["energy_roofline"]
    bound_j: float = Field(description="W·ε_flop + Q·ε_mem + π0·T, J.")
    bound_j_per_flop: float = Field(description="bound_j / W, J/FLOP.")
    bound_flop_per_j: float = Field(description="W / bound_j, FLOP/J.")
    flop_energy_j: float = Field(description="W·ε_flop, J.")
    memory_energy_j: float = Field(description="Q·ε_mem, J.")
    static_energy_j: float = Field(description="π0·T, J.")
    time_s: float = Field(description="T = max(W/peak, Q/bandwidth), s.")
    bytes_moved: float = Field(description="Q used, bytes (0 when unknown).")
    eps_flop_j: float = Field(description="ε_flop, J/FLOP.")
    eps_mem_j_per_byte: float = Field(description="ε_mem, J/byte.")
    pi0_w: float = Field(description="π0, W.")
    measured_j: float | None = Field(description="Measured energy, J.")
    orders_of_magnitude: float | None = Field(description="log10(measured_j / bound_j).")
    assumptions: dict[str, Any]


class BoundsRecord(BaseModel):
    """The measured energy against the three references."""

    model_config = _OUT

    inputs: BoundInputs
    measured_flop_per_j: float = Field(description="FLOPs / measured energy, FLOP/J.")
    landauer: LandauerRecord
    hardware_roofline: HardwareRooflineRecord | None
    energy_roofline: EnergyRooflineRecord | None
    unavailable: dict[str, str] = Field(description="Bound → why it could not be computed.")


class EnergyComponentRecord(BaseModel):
    """One part of the measured accelerator energy, with its band; None with a reason when its
    inputs are missing (never 0)."""

    model_config = _OUT

    energy_j: float | None = Field(description="Point value, J; None when not available.")
    energy_low_j: float | None = Field(description="Bottom of its band, J.")
    energy_high_j: float | None = Field(description="Top of its band, J; None when unbounded.")
    share: float | None = Field(description="energy_j / measured_j.")
    status: Status
    reason: Reason
    basis: str = Field(description="The formula and what it assumes.")


class EnergyComponentsRecord(BaseModel):
    """The four parts: constant + compute + memory + unexplained = measured."""

    model_config = _OUT

    constant: EnergyComponentRecord = Field(description="π0·T.")
    compute: EnergyComponentRecord = Field(description="W·ε_flop.")
    memory: EnergyComponentRecord = Field(description="Q·ε_mem.")
    unexplained: EnergyComponentRecord = Field(
        description="measured − the three; negative when the upper-bound ε and π0 over-explain."
    )


class DeviceTermsRecord(BaseModel):
    """One accelerator's terms: π0 and Q with where they came from, and the ε used."""

    model_config = _OUT

    key: str
    catalog_id: str | None
    span_s: float = Field(description="T, the device's measured span, s.")
    pi0_w: float = Field(description="Constant power used, W.")
    pi0_low_w: float = Field(description="Bottom of its band, W.")
    pi0_high_w: float | None = Field(description="Top of its band, W; None when unbounded.")
    pi0_provenance: Literal[
        "measured_lowest_sustained", "catalog_idle", "catalog_given", "assumed_default"
    ]
    pi0_basis: str
    bytes_moved: float | None = Field(description="Q point estimate, bytes.")
    bytes_low: float | None = Field(description="Bottom of Q's band, bytes.")
    bytes_high: float | None = Field(description="Top of Q's band, bytes.")
    mem_busy_s: float | None = Field(description="Memory-busy seconds the counter saw.")
    mem_observed_s: float | None = Field(description="Seconds with a counter reading.")
    mem_coverage: float | None = Field(description="mem_observed_s / span_s.")
    bytes_provenance: Literal["memory_activity_counter"] | None
    bytes_reason: Reason
    eps_flop_j: float | None = Field(description="ε_flop used, J/FLOP.")
    eps_mem_j_per_byte: float | None = Field(description="ε_mem used, J/byte.")
    eps_provenance: str | None = Field(description="derived (from TDP − π0) or given.")


class EnergyDecompositionRecord(BaseModel):
    """The accelerators' measured energy split as the energy roofline splits it (Choi et al.
    2013), each part with its band and sources (`accounting.decomposition`)."""

    model_config = _OUT

    model: str
    measured_j: EnergyJ
    measured_low_j: EnergyLowJ
    measured_high_j: EnergyHighJ
    flops: float | None = Field(description="Work W, FLOP; None when not declared.")
    dtype: str
    components: EnergyComponentsRecord
    pi0_w: float = Field(description="Σπ0 over the devices, W.")
    bytes_moved: float | None = Field(description="ΣQ, bytes; None unless every device has Q.")
    sustained_window_s: float = Field(
        description="Shortest chunk whose mean power counts as sustained, s."
    )
    devices: list[DeviceTermsRecord]
    notes: Notes


class FunctionalUnitRecord(BaseModel):
    """The SCI's R."""

    model_config = _OUT

    name: str
    count: float = Field(description="How many units the energy delivered.")


class EmbodiedRecord(BaseModel):
    """The SCI's M for one piece of hardware: TE × (TiR / EL) × (RR / ToR)."""

    model_config = _OUT

    label: str | None
    total_embodied_g: float = Field(description="TE, life-cycle embodied emissions, gCO2e.")
    time_reserved_s: float = Field(description="TiR, s.")
    expected_lifespan_s: float = Field(description="EL, s.")
    resources_reserved: float = Field(description="RR.")
    total_resources: float = Field(description="ToR.")
    time_share: float = Field(description="TiR / EL.")
    resource_share: float = Field(description="RR / ToR.")
    embodied_g: float = Field(description="M, gCO2e.")
    source: str


class SciRecord(BaseModel):
    """Software Carbon Intensity (ISO/IEC 21031): (E·I + M) per R."""

    model_config = _OUT

    sci_g_per_unit: float = Field(description="(O + M) / R, gCO2e per functional unit.")
    per: str = Field(description="The functional unit's name.")
    functional_unit: FunctionalUnitRecord
    total_g: float = Field(description="O + M, gCO2e.")
    operational_g: float = Field(description="O = E·I, gCO2e.")
    embodied_g: float = Field(description="M, gCO2e.")
    energy_it_j: EnergyJ
    energy_kwh: float = Field(description="E, kWh, PUE included.")
    pue: PueRecord
    intensity: EmissionFactorRecord
    embodied: list[EmbodiedRecord]
    boundary: str | None = Field(description="The software boundary.")
    notes: Notes


class MeasurementQuality(BaseModel):
    """The measurement's grade as the run's meter(s) reported it (`meters.quality`).

    A: every device by its energy counter, both edges of the window read synchronously, full
    coverage. B: averaged power, a counter without its edges, or a small hole. C: instantaneous
    power, a device lost, or a large hole. D: not a measurement (estimate, simulated, nothing
    read). With several meters (nodes), the worst grade, and every limit once.
    """

    model_config = _OUT

    grade: Literal["A", "B", "C", "D"] = Field(description="A (best) to D (not a measurement).")
    limits: list[str] = Field(description="What keeps the grade down, one line each.")
    improve: list[str] = Field(description="What would lift it, one line each.")
    meters: int = Field(description="How many meters (nodes) reported a grade.")


class RunReportPublic(BaseModel):
    """The run report: energy by device, host and phase with uncertainty bands and measurement
    methods, efficiency, the three bounds, cost and carbon on the run's accounting basis."""

    model_config = _OUT

    run: ReportRun
    t0_s: float = Field(description="First sample, unix s.")
    t1_s: float = Field(description="End of the last chunk, unix s.")
    duration_s: float = Field(description="t1_s − t0_s, s.")
    energy: ReportEnergy
    work: ReportWork
    efficiency: ReportEfficiency
    bounds: BoundsRecord | None = Field(description="None without FLOPs (see ``notes``).")
    energy_decomposition: EnergyDecompositionRecord | None = Field(
        default=None,
        description="Constant, compute, memory and unexplained energy of the accelerators; "
        "None when nothing was measured over any time.",
    )
    cost: ReportCostPublic
    carbon: ReportCarbonPublic
    sci: SciRecord | None = Field(description="None when no grid intensity applies.")
    notes: Notes
    accounting: AccountingBasisPublic
    quality: MeasurementQuality | None = Field(
        default=None, description="The measurement's grade; None when no meter reported one."
    )
    refused_declarations: list[str] = Field(
        default_factory=list,
        description="Declarations the run's meters refused (e.g. a model size that is not a "
        "whole count), one line each: the figures they would have given are missing. From "
        "the meters' ``refused_declarations`` in the run's host_info.",
    )
