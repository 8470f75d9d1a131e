"""thermoledger's meter: the light process that samples GPU and CPU energy beside a job.

It imports numpy and the standard library only (``pynvml`` lazily, when NVML is used; httpx
when uploading); never pint, FastAPI, SQLAlchemy or Alembic. Device backends live in
`meters.backends`, shipped fakes for tests and demos in `meters.testing`, and the error tree in
`meters.errors`. The in-process API is `meters.api` (``from meters import Meter, meter``,
imported on first use so that ``import meters`` stays cheap); the ``thermoledger`` command is
`meters.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meters.api import Meter, meter

__all__ = ["Meter", "meter"]


def __getattr__(name: str) -> Any:
    # PEP 562: `meters.api` pulls in the sampler and httpx; load it only when asked for.
    if name in __all__:
        from meters import api

        return getattr(api, name)
    raise AttributeError(f"module 'meters' has no attribute {name!r}")
