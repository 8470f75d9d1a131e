"""thermoledger's accounting core: units, integration, bounds, carbon, cost, planning, amortisation.

The core is pure (no I/O besides reading its own package data). Inside, everything is plain
float64 numpy arrays in SI base units (J, W, s, FLOP); pint Quantities appear only at the edges
(`accounting.units`). Importing this package does not import pint, so the numpy-only kernels in
`accounting.integrate` can be shared with the light meter process.
"""

from .errors import AccountingError

__all__ = ["AccountingError"]
