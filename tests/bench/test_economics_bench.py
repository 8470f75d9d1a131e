"""bench/economics.py's plain-Python reference plans what the library plans.

The benchmark's ratio means something only if its reference does the same work: the same
optimum, point by point.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from thermoledger.accounting.scaling import plan_inference_aware

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
_economics = importlib.import_module("economics")


@pytest.mark.parametrize(
    ("n", "d", "demand"), [(1e9, 2e10, 0.0), (7e9, 2e12, 1e12), (7e10, 1.4e12, 1e15)]
)
def test_python_reference_agrees_with_the_vectorised_plan(
    n: float, d: float, demand: float
) -> None:
    loss, n_best, d_best = _economics._python_plan(n, d, demand)
    plan = plan_inference_aware(
        training_flop_per_j=_economics.FLOP_PER_J,
        inference_flop_per_j=_economics.INFERENCE_FLOP_PER_J,
        inference_tokens=demand,
        n_params=n,
        n_tokens=d,
    )
    assert loss == pytest.approx(float(plan.target_loss), rel=1e-14)
    np.testing.assert_allclose(
        [n_best, d_best], [plan.optimum.n_params, plan.optimum.n_tokens], rtol=1e-12
    )
