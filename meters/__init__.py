"""thermoledger's meter: the light process that samples GPU and CPU energy beside a job.

It imports numpy and the standard library only (``pynvml`` lazily, when NVML is used); never
pint, FastAPI, SQLAlchemy or Alembic. Device backends live in `meters.backends`, shipped fakes for
tests and demos in `meters.testing`, and the error tree in `meters.errors`.
"""
