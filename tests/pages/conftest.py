"""Fixtures for the page tests: the service fixtures (both backends) and a seeded project."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from tests.pages.seed import Fleet, States, configure_accounting, seed_project, seed_states
from tests.service import conftest as service
from tests.support.client import Project, TestClient, make_project

# The service tests' fixtures, shared: one migrated database per module and backend.
database_url = service.database_url
settings = service.settings
app = service.app
client = service.client
project = service.project
other = service.other
run_id = service.run_id


@pytest.fixture(scope="module")
def seeded(app: FastAPI, client: TestClient) -> tuple[Project, Fleet]:
    """One project per module and backend with two models' runs (see `seed_project`), its
    region and PUE configured (`configure_accounting`: DE, typical; no tariff)."""
    owner = make_project(app)
    configure_accounting(client, owner.admin)
    return owner, seed_project(client, owner.every, duration_s=300.0)


@pytest.fixture(scope="module")
def states(app: FastAPI, client: TestClient) -> tuple[Project, States]:
    """Another project per module and backend with one run per page state (`seed_states`):
    no FLOPs, FLOPs without a catalog peak, constant power, no chunks (ended and running),
    a model with no inference run, and a priced run."""
    owner = make_project(app)
    configure_accounting(client, owner.admin)
    return owner, seed_states(client, owner.every, owner.admin)
