"""Energy integration: power traces and energy counters to joules, with gaps, resets and bounds.

Everything here is plain float64 numpy arrays in SI units (seconds, watts, joules) and imports
only numpy and the standard library, so the light meter process can summarise its chunks with
the same code the service uses for reports (the meter must never import pint). The options of
a power integration named below (``gap_factor``, ``max_power_w``, ``min_power_w``,
``coverage_fraction``, ``unseen_margin``, ``rare_level_readings``, ``averaging_window_s`` ...)
are the fields of one `PowerModel`, checked once when it is made.

Integration rule
    A power trace (t_s, power_w) is modelled as **piecewise linear** between samples: interval
    i, from sample i to sample i+1, holds energy e_i = dt_i · (p_i + p_{i+1}) / 2 (trapezoid).
    Window and cumulative energies use the exact integral of that same model (quadratic inside
    an interval), so a window whose edges fall on samples gets exactly the trapezoid sum, and
    adjacent windows add up to the whole to float rounding.

Averaged readings (``averaging_window_s`` w > 0)
    A reading r(t) that is the trailing moving average of the true power over [t − w, t]
    (NVML on Hopper: w = 1 s) lags P by w/2: integrated as if it were P(t), a window cut at a
    450 W step misses by up to 450 W × w/2. But **w·r(t) is exactly the energy of [t − w, t]**.
    A group (a chunk; the whole trace for `integrate_power`) [a, b] without a gap, of length
    L = m·w + ρ (m = floor(L/w), 0 ≤ ρ < w; a group within 1e-9·w of m windows counts m), is
    estimated by the **block rule**:

    * m whole windows anchored at its start, Σ_{k=1..m} w·r(a + k·w), with r at each anchor
      interpolated linearly between the two samples around it (a meter's ticks sit on a grid
      a + j·Δ, so its anchors fall on a sample, or within the ticks' jitter of one);
    * the remainder [c, b], c = a + m·w, lag-corrected (the rule below, on [c, b]):
      ∫_c^b r dt + (w/2)·(r(b) − r(c)), then clipped to what the readings at c and b allow.

    The estimate is **exact (up to the anchors' interpolation) when the group's length is a
    multiple of w**, and otherwise errs by at most the remainder's band, which vanishes as ρ
    goes to 0 or to w and is widest near ρ = w/2. That is a property of boxcar averages, not
    of this rule: a w-periodic component of P with zero mean changes no reading (each reading
    averages whole periods of it), so no rule built on the readings can tell how much of it
    falls into a part ρ of a window; only whole windows are determined, and the rest only as
    far as the floor and the ceiling allow. Band (both bounds, unless said):

    * each interpolated anchor, u after the sample before it and v before the one after:
      (ceiling − floor)·2uv/(u + v), at most twice its distance to the nearer sample and 0 on
      a sample (r is Lipschitz with constant (ceiling − floor)/w; it can rise at full slope to
      the anchor and fall back at full slope to the next sample, and no more). The anchor c
      counts twice: it also opens the remainder.
    * the remainder X = E[c, b]: with Y = E[b − w, c] (length w − ρ) and Z = E[c − w, b − w]
      (length ρ), w·r(b) = Y + X and w·r(c) = Z + Y, each part between floor and ceiling
      times its length, so X lies in [X_lo, X_hi] = [max(floor·ρ, w·r(b) − ceiling·(w − ρ),
      w·(r(b) − r(c)) + floor·ρ), min(ceiling·ρ, w·r(b) − floor·(w − ρ), w·(r(b) − r(c)) +
      ceiling·ρ)], no wider than (ceiling − floor)·min(ρ, w − ρ) (the terms in r(c) widened
      by its anchor's term when c falls between samples). The lag-corrected estimate is
      clipped into it (the truth lies in it, so clipping can only bring it closer), and its
      bounds are min(R, X̂ − X_lo) below and min(R, X_hi − X̂) above, with R the lag-corrected
      rule's residual at c and at b (below) plus what linear interpolation of r between
      samples may miss over [c, b]: (ceiling − floor)/w × d²/4 per interval d (d·d'/2 for the
      part d' of one).

    For the meter's chunks (bins of 10 s, 10·w, aligned to the run's start) the interior
    chunks are within a tick's jitter of 10·w and the last one ends at the closing edge, so
    their remainders and bands are small. Chunk figures no longer add up to the whole trace's
    figure by construction (each chunk anchors its own blocks), but each is exact where its
    length is a multiple of w, so the chunks' sum is as good as the whole-trace figure there.

    **Groups with a gap** keep the lag-corrected rule over the whole group (a block must not
    straddle a gap: r was not read there), and so do the curves (`power_energy_curve`,
    `window_energy`): their windows are cut anywhere on one cumulative curve, and adjacent
    windows must add up to the whole exactly (phases add up to the run), which blocks
    anchored at each window's own start would break. The **lag-corrected rule**: read as the
    power at t − w/2, the readings over [a, b] describe the true energy over [a − w/2,
    b − w/2]; the chunk and window edges stay at sample times (a chunk's samples must lie
    inside its [t0_s, t1_s], and counter chunks of the same device tile on those times), so
    the two half-windows are traded at the edges: E(a, b) ≈ ∫_a^b r dt + (w/2)·(r(b) − r(a)).
    In terms of P this weighs [a − w, a] and [b − w, b] with zero-mean linear ramps, so the
    estimate is exact whenever P is linear over the window before each edge (a steady load, a
    ramp, a step more than w before an edge), needs no sample after b (a meter seals a chunk
    at its bridge sample), and telescopes: adjacent windows add up to the whole. Residual: at
    each edge the error is ∫ P·h over the edge's [t − w, t], with h a ramp from +1/2 down to
    −1/2. That interval is exactly the one the edge's reading averages, so P's mean there is
    r(t): the worst P within [floor, ceiling] with that mean sits at the ceiling for the first
    u·w and at the floor after (u = (r − floor)/(ceiling − floor)), which bounds the error by
    (w/2)·(r − floor)(ceiling − r)/(ceiling − floor) per edge, at most (ceiling − floor)·w/8
    (r midway); both signs are possible. An edge that meets a gap is not corrected, and may
    be off by the whole lag, (ceiling − floor) × w/2.

    All these are bounds when the ceiling is the device's power limit (``max_power_w``); with
    the trace's own peak they are an assumption. The corrected energy is clipped at 0 (only
    noise could drive it below), and a chunk's min/max power widen to include its mean (the
    true mean may pass the extremes of the smoothed readings).

Gaps
    Interval i is a **gap** when dt_i > gap_factor × nominal interval (default factor 3). The
    nominal interval is the caller's (the meter knows its own period) or else the median
    interval of the trace: exact up to 65 536 intervals, beyond that the median of 64 runs of
    1 024 consecutive intervals spread evenly over the trace (a deterministic estimate that
    costs next to nothing beside the integration). Gaps are always detected and reported
    (count, seconds, where) and handled by an explicit policy: ``"exclude"`` (default; the gap
    counts 0 J and the result reports what a linear bridge would have added), ``"bridge"``
    (the linear bridge is counted, and labelled), ``"hold"`` (the last reading is held over
    the gap). Whatever the policy, the band says what the gap could have held: between
    ``min_power_w`` (default 0 W) and the ceiling, times its length. The ceiling is
    ``max_power_w`` (the device's power limit) when the caller gives it, which makes it a
    bound; otherwise it is the trace's own peak, which is an assumption, not a bound
    (reported as ``ceiling_power_w``).

Chunks tile the trace by the **left-sample rule**
    Interval i belongs to the chunk holding sample i. A chunk therefore spans from its first
    sample to the first sample of the next chunk of the same trace (its last interval bridges
    to the next chunk); the last chunk of a trace ends at its last sample. Every interval is
    counted exactly once, chunk energies sum to the trace's energy (averaged readings: see
    "Averaged readings"), and t1_s of one chunk is t0_s of the next. A meter seals chunk k
    when the first sample of chunk k+1 has arrived.
    Chunk min/max power are over the samples the chunk's intervals touch (so they include the
    next chunk's first sample), which keeps min ≤ mean ≤ max.

Counters
    A cumulative counter (J since an origin; convert NVML's mJ first) gives energy by
    differencing. A decrease is a **wrap** when the caller gives ``wrap_j`` (the modulus, e.g.
    RAPL's max_energy_range) and the wrapped difference is physically plausible: at most
    ``max_power_w`` × dt, or without a limit at most twice the highest rate the same trace shows
    between ordinary readings (a heuristic; at most one wrap per interval is assumed). Any other
    decrease is a **reset** (driver reload): the post-reset value is energy consumed since the
    reload, so it is counted as a lower bound for that interval; the part before the reload is
    unknown, bounded above by max(0, max_power_w × dt − post-reset value), or unbounded (+inf)
    without ``max_power_w``. An **increase** above what the device can draw, more than
    ``max_power_w`` × (dt + 1 s) + 1 J (the second allows for a counter that updates late), is
    no energy either: a counter that read 0 (or too little) for one tick and recovered would
    otherwise count everything since its origin again. It is taken like a reset: 0 counted, up
    to ``max_power_w`` × dt unknown, and counted and listed among the resets. Without
    ``max_power_w`` no increase can be judged. Energy is neither lost nor invented; resets and
    wraps are counted and listed. Sampling gaps do not lose counter energy (the counter
    integrates through them); they are still reported.

Uncertainty model
    Every result carries ``energy_j`` (the estimate) and a band ``[energy_low_j, energy_high_j]``
    built from two kinds of term, kept apart so aggregation can combine each correctly:

    * ``sensor_uncertainty_j`` (symmetric, systematic for one device): for power-derived energy
      ∫ max(sensor_rel_error · P, sensor_abs_error_w) dt over the measured intervals, defaults
      ±5 % of reading or ±5 W whichever is larger (NVML's ±5 % statement, nvidia-smi's ±5 W).
      For counters, ``counter_rel_error`` × energy, default 2 %: a choice, not a datasheet
      figure. The counter is accumulated on the device at the sensor's own rate, so the
      sampling, aliasing and coverage errors of polled power vanish; what remains is the
      sensor's gain error, for which NVIDIA publishes no counter figure. Pass a calibrated
      value when you have one.
    * ``bound_below_j`` / ``bound_above_j`` (one-sided, not statistical): gaps (see above),
      counter resets, **coverage** and the **averaging residual**. When readings cover only
      ``coverage_fraction`` c of the time (A100/H100 instantaneous readings: about 0.25,
      Yang et al., SC24; c = 0 for point samples), the unseen 1 − c of each interval is
      bounded as "Unseen power" (below) says: between a floor L and a ceiling U, so interval
      energy e lies in [e − (1−c)(e − L·dt), e + (1−c)(U·dt − e)]. Prefer the counter, or
      readings that see all of the time (the driver's 1 s average). The averaging residual
      (the block rule's anchors and remainder, or for the lag-corrected rule at most
      (ceiling − floor) × w/8 per window edge, × w/2 per gap edge; see "Averaged readings")
      is added to the bounds: it is a worst case of either sign (the remainder's may be
      narrower on one side), and like aliasing it is correlated across the devices of one job
      (they step together), so it must add linearly rather than root-sum-square with the
      sensor term.

    The band is energy_low_j = max(0, E − sensor − bound_below), energy_high_j = E + sensor +
    bound_above; terms add linearly inside one trace. Across devices (`aggregate_energy`), rows
    of the same device add linearly first (its sensor error is systematic); then sensor errors
    of different devices combine as independent (root-sum-square, the default) or linearly
    (``combine="linear"``, conservative: e.g. GPUs of one model may share a calibration bias).
    Bounds always add linearly (aliasing is correlated across ranks of one job).

Unseen power (``unseen_margin`` f, default 0.1)
    What a partly covered interval drew while nobody looked is bounded by what was observed:
    per group (a chunk; the whole trace for `integrate_power`, and for `power_energy_curve`,
    whose windows then share that trace-wide range), with [lo, hi] the range of the readings
    the group's intervals touch (its own samples and, by the left-sample rule, the next
    chunk's first), the unseen power lies in [L, U] = [lo − f·(hi − lo), hi + f·(hi − lo)],
    clipped to [``min_power_w``, ``max_power_w``] (never inside [lo, hi]). One reduction per
    group, vectorised; no loop over samples.

    *Assumption*: every power level the load holds for a part of the group is seen by at
    least one of its readings. Then the true energy of the unseen part lies in [lo, hi] × its
    time, whatever the waveform and however it aliases against the tick: a square wave of
    duty 0.3 and period 0.25 s read every 0.1 s lands on 5 phases, sees 1 or 2 of them high
    (20 or 40 % against 30 %) and is off by ±25 % per 10 s chunk (60/600 W), yet both
    levels are in every chunk's readings, so the band holds. The margin f is slack for
    energy (the true mean of a load whose levels were all seen lies inside [lo, hi]); it is
    there for extremes that fall between samples, and 0.1 covers, point by point, any
    sinusoidal load read at least 6 times per period (its samples then miss at most
    (1 − cos 30°)/(2 cos 30°) = 7.7 % of their range on each side). On a steady load the
    range is nil and the band is the sensor's alone, where the old [floor, ceiling] band
    (0 W to the power limit) said nothing. *Where the assumption fails*: a level no reading
    of the group ever sees, above all a load in step with the tick (pulses every 0.1 s, or
    every 0.05 s, that always fall between readings), or a chunk of very few readings. No rule
    built on the readings can bound what they never show; the driver's average, which sees
    all of the time, can (the meter's default where a GPU has one).

    *Rare levels* (``rare_level_readings`` k, default 3): a level the load holds for a share
    q of the group's time is missed by all n readings at random phases with probability
    (1 − q)^n < e^(−qn), under 5 % once q ≥ 3/n. So the band also allows, for k/n of the
    measured time (capped at all of it), power anywhere out to ``min_power_w`` below and
    the ceiling above: narrow for a 10 s chunk of 100 readings (3 %), wide on purpose for a
    2 s window of 20 (15 %), which is what so few point samples can say. A load in step
    with the tick is not at random phases, and stays outside any such rule.

    ``unseen_margin = math.inf`` gives the worst case instead: the unseen part anywhere
    between ``min_power_w`` and the ceiling, a bound (not an assumption) when the ceiling is
    the device's power limit, and wide on purpose.

Many traces at once
    The **segmented form** is concatenated arrays plus ``offsets`` (length traces + 1, from 0
    to the total length; trace k is ``[offsets[k], offsets[k+1])``); `segments_from_rows` and
    `segments_from_list` build it from a 2-D (devices × samples) array or a list of traces.

Overlapping domains
    Totals across devices add each joule once: a device may declare the kinds it covers on its
    host (a GH200-class module covers its CPU), and the devices it covers are listed but left
    out of every total (`covered_by`, module ``overlap``).

Speed
    The power kernel streams memory once: it walks the arrays in cache-sized blocks with
    preallocated buffers (``out=``), validates and detects gaps on each block while it is in
    cache, and forms the trapezoid sum with two dot products (no per-interval temporaries).
    The sensor term costs nothing while every reading is above abs/rel (100 W by default);
    the trace's peak is read only when a bound needs it (a gap, the worst-case coverage bound
    or an averaging window without ``max_power_w``); partial coverage bounded by the observed
    range takes each group's min and max, block by block, in the same pass. Averaged
    readings cost nothing when w = 0; with w > 0, after the kernel, one pass builds a search
    key over the samples (each group's times from its first sample, groups end to end), one
    searchsorted finds the samples around every anchor of every group, and the remainders
    re-read their few samples; no loop over samples or groups.
    ``bench/integrate.py`` measures it against a memory-bandwidth reference.
"""

from ..errors import InvalidSamples
from ._validate import InvalidArgument
from .aggregate import EnergyTotals, aggregate_energy
from .chunks import ChunkSummaries, summarize_chunks
from .counter import CounterEnergy, integrate_counter
from .curves import (
    EnergyCurve,
    WindowEnergy,
    counter_energy_curve,
    power_energy_curve,
    window_energy,
)
from .model import (
    COMBINES,
    COUNTER_REL_ERROR,
    GAP_POLICIES,
    METHODS,
    POWER_METHODS,
    SENSOR_ABS_ERROR_W,
    SENSOR_REL_ERROR,
    UNSEEN_MARGIN,
    Combine,
    GapPolicy,
    Method,
    PowerMethod,
    PowerModel,
)
from .overlap import KINDS, covered_by, kind_order
from .power import (
    GapReport,
    PowerEnergy,
    PowerEnergyBatch,
    integrate_power,
    integrate_power_rows,
    integrate_power_segments,
)
from .segments import segments_from_list, segments_from_rows

__all__ = [
    "COMBINES",
    "COUNTER_REL_ERROR",
    "GAP_POLICIES",
    "KINDS",
    "METHODS",
    "POWER_METHODS",
    "SENSOR_ABS_ERROR_W",
    "SENSOR_REL_ERROR",
    "UNSEEN_MARGIN",
    "ChunkSummaries",
    "Combine",
    "CounterEnergy",
    "EnergyCurve",
    "EnergyTotals",
    "GapPolicy",
    "GapReport",
    "InvalidArgument",
    "InvalidSamples",
    "Method",
    "PowerEnergy",
    "PowerEnergyBatch",
    "PowerMethod",
    "PowerModel",
    "WindowEnergy",
    "aggregate_energy",
    "counter_energy_curve",
    "covered_by",
    "integrate_counter",
    "integrate_power",
    "integrate_power_rows",
    "integrate_power_segments",
    "kind_order",
    "power_energy_curve",
    "segments_from_list",
    "segments_from_rows",
    "summarize_chunks",
    "window_energy",
]
