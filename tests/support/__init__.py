"""Helpers shared by the test folders: one copy of each, imported as ``tests.support.<module>``.

Test modules import helpers from here, never from a ``conftest.py`` (those hold fixtures only).

- `tests.support.client`: the service under test: clean settings, the test client, projects
  with a token per scope, bearer headers, runs, row counts.
- `tests.support.builders`: wire payloads (devices, chunks of exactly known energy, batches)
  and reading a chunk's sample columns whatever their encoding.
- `tests.support.dbutil`: a throw-away database per test: SQLite, or a PostgreSQL schema.
- `tests.support.ledger`: metered and finished runs, accounting settings and factors, for the
  ledger and audit tests.
- `tests.support.deploy`: where ``deploy/`` is, and its YAML documents.
- `tests.support.waiting`: `wait_until`, polling a condition with a deadline.
- `tests.support.gpu`: the real NVML for the tests marked `gpu`, or a skip (a failure when
  `THERMOLEDGER_TEST_REQUIRE_GPU` is set).

The uploader's fake service ships with the package: `thermoledger.meters.testing.fake_service`.
"""
