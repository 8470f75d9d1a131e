"""Callbacks that meter jobs where they live: the Hugging Face ``Trainer`` and PyTorch Lightning.

::

    from thermoledger.integrations import ThermoledgerCallback, ThermoledgerLightningCallback

    ThermoledgerCallback.attach(trainer)                        # transformers.Trainer
    L.Trainer(callbacks=[ThermoledgerLightningCallback()])      # lightning

Each records the job's phases (train, epoch-<n>, eval, predict), the work the framework knows
(model size, FLOPs, tokens), its evaluation metrics, and logs ``energy_j``,
``energy_per_token_j``, ``flop_per_j`` and ``co2e_g`` back into the framework's loggers
(`integrations.hf`, `integrations.lightning`, `integrations._common`).

Importing this package imports neither torch nor a framework: each callback's module is loaded
when the callback is first asked for (PEP 562), and says which extra to install
(``thermoledger[hf]``, ``thermoledger[lightning]``) where its framework is missing. Installed,
this package is ``thermoledger.integrations``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hf import ThermoledgerCallback
    from .lightning import ThermoledgerLightningCallback

__all__ = ["ThermoledgerCallback", "ThermoledgerLightningCallback"]

_MODULES = {"ThermoledgerCallback": "hf", "ThermoledgerLightningCallback": "lightning"}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
