"""thermoledger: energy and thermodynamic cost accounting for machine-learning jobs.

One import name for everything the distribution installs:

* `thermoledger.meters` — the light meter that runs beside a job (NVML, RAPL, simulated and
  replay backends; sampler, spool, uploader; the ``thermoledger`` command);
* `thermoledger.accounting` — the pure numpy + pint core (units, integration, bounds, carbon,
  cost, planning, amortisation, reports);
* `thermoledger.db` and `thermoledger.migrations` — the SQL models and Alembic migrations;
* `thermoledger.service` — the FastAPI service and the ``thermoledger-server`` command;
* `thermoledger.integrations` — the Hugging Face ``Trainer`` and Lightning callbacks (extras
  ``[hf]``, ``[lightning]``; the frameworks load only with their callback).

The in-process API is re-exported here::

    from thermoledger import Meter, meter

Both are loaded on first use (PEP 562), so ``import thermoledger`` imports nothing but this file,
and a training script pays for the meter only when it asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .meters.api import Meter, meter

__all__ = ["Meter", "meter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from .meters import api

        return getattr(api, name)
    raise AttributeError(f"module 'thermoledger' has no attribute {name!r}")
