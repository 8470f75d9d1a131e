"""thermoledger's meter: the light process that samples GPU and CPU energy beside a job.

It imports numpy and the standard library only (``pynvml`` lazily, when NVML is used; httpx
when uploading); never pint, FastAPI, SQLAlchemy or Alembic. Device backends live in
`meters.backends`, shipped fakes for tests and demos in `meters.testing`, and the error tree in
`meters.errors`. The in-process API is `meters.api` (``from thermoledger import Meter, meter``
or ``from thermoledger.meters import Meter``, imported on first use so that importing the package
stays cheap); the ``thermoledger`` command is `meters.cli`. Installed, this package is
``thermoledger.meters``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Meter, meter

__all__ = ["Meter", "meter"]


def __getattr__(name: str) -> Any:
    # PEP 562: `meters.api` pulls in the sampler and httpx; load it only when asked for.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
