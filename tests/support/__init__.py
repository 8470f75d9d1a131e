"""Helpers shared by the test folders: one copy of each, imported as ``tests.support.<module>``.

- `tests.support.waiting`: `wait_until`, polling a condition with a deadline (no bare sleeps).
"""
