"""The Dockerfile and the compose file: the structure that a build would rely on.

No image is built here (the suite runs without a Docker daemon or a registry). What a broken
image would most likely get wrong is checked instead: the two targets exist, they run as an
unprivileged user, their entry points are our console scripts, the meter image carries neither
the service stack nor a CUDA base, every package of the distribution is copied into the build,
the service has a health check; and the compose file is valid against the Compose
Specification's JSON schema (vendored: ``data/compose_spec.json``, Apache-2.0, from the
compose-spec project as shipped with docker-compose 1.29), with PostgreSQL → migrations →
service ordered by health, and command lines our CLI parsers accept. The images themselves are
built and run by ``make images`` (``deploy/images.sh``, podman/buildah offline; CI runs it after
the suite); here only its refusals are checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.deploy import DEPLOY, ROOT, yaml_documents
from thermoledger.meters import cli as meter_cli
from thermoledger.service import cli as server_cli

DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARGs and the stages, with their instructions (continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = stages[match.group(2)] = Stage(match.group(2), match.group(1))
        elif current is None:
            assert keyword == "ARG", line
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            current.instructions.append((keyword, rest.strip()))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"exec form expected: {args}"
    return [str(v) for v in value]


def test_one_dockerfile_builds_the_service_and_the_meter() -> None:
    assert {"service", "meter"} <= set(STAGES)
    for name in ("service", "meter"):
        base = STAGES[name].base
        resolved = ARGS[base[2:-1]] if base.startswith("${") else base
        assert resolved.startswith("python:3.1"), resolved
        # The meter takes NVML from the host driver through the NVIDIA runtime.
        assert "cuda" not in resolved.lower()


@pytest.mark.parametrize("target", ["service", "meter"])
def test_each_image_runs_its_console_script_as_an_unprivileged_user(target: str) -> None:
    stage = STAGES[target]
    user = stage.last("USER").split(":")[0]
    assert user not in ("root", "0")
    entrypoint = exec_form(stage.last("ENTRYPOINT"))
    scripts = PYPROJECT["project"]["scripts"]
    assert entrypoint[0] in scripts
    parser = {
        "thermoledger.meters.cli:main": meter_cli,
        "thermoledger.service.cli:main": server_cli,
    }[scripts[entrypoint[0]]].build_parser()
    parsed = parser.parse_args(exec_form(stage.last("CMD")))
    wanted = {"service": ("command", "serve"), "meter": ("subcommand", "sidecar")}[target]
    assert getattr(parsed, wanted[0]) == wanted[1]


def copied_from(stage: Stage) -> list[str]:
    """The stages that ``stage`` copies files from (``COPY --from=NAME``)."""
    return re.findall(r"--from=(\S+)", " ".join(stage.all("COPY")))


def installs(target: str) -> str:
    """Every RUN of a target and of the stages it copies its installed files from (the wheels'
    build stage aside: it builds for both images)."""
    runs = list(STAGES[target].all("RUN"))
    for source in copied_from(STAGES[target]):
        if source != "build":
            runs += installs(source).split("\n")
    return "\n".join(runs)


def test_each_image_copies_its_installed_packages_and_no_wheels() -> None:
    """buildah 1.28 (Debian 12's podman build) cannot ``RUN --mount=type=bind,from=STAGE`` a
    stage other than the one it built last; ``COPY --from`` works under every builder. The
    runtime stages copy installed files, not the wheels (no layer of wheels in the image)."""
    for stage in STAGES.values():
        for run in stage.all("RUN"):
            assert "from=" not in run, f"{stage.name}: RUN --mount from a stage: {run}"
    for target, extras in (("service", "[service,postgres]"), ("meter", "[nvml]")):
        sources = copied_from(STAGES[target])
        assert sources, f"{target} copies nothing from another stage"
        assert "build" not in sources, f"{target} copies the wheels themselves"
        assert f'"thermoledger{extras}"' in installs(target)
        for source in sources:
            assert f"--from=build /wheels/{target} " in " ".join(STAGES[source].all("COPY"))


def test_the_meter_image_installs_no_service_stack() -> None:
    installs_ = installs("meter")
    assert '"thermoledger[nvml]"' in installs_
    for extra in ("service", "postgres", "dev"):
        assert f"[{extra}" not in installs_
        assert f",{extra}" not in installs_
    assert "NVIDIA_DRIVER_CAPABILITIES=utility" in " ".join(STAGES["meter"].all("ENV"))


def test_the_service_image_has_a_health_check_on_healthz() -> None:
    health = STAGES["service"].last("HEALTHCHECK")
    assert "/healthz" in health
    assert "CMD" in health
    assert STAGES["service"].last("EXPOSE") == "8000"


def test_the_build_copies_every_package_of_the_distribution() -> None:
    copied = {args.split()[0] for args in STAGES["build"].all("COPY")}
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= {
        part for args in STAGES["build"].all("COPY") for part in args.split()[:-1]
    }
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for package in packages:
        assert f"!{package}/" in ignore, f"{package} is excluded from the build context"


# -- compose ------------------------------------------------------------------------------------

COMPOSE = yaml_documents(DEPLOY / "compose.yaml")[0]


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads((DEPLOY.parent / "tests/deploy/data/compose_spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(COMPOSE)


def test_the_schema_check_does_refuse_a_broken_compose_file() -> None:
    """Control: the vendored schema catches an unknown key and a bad dependency condition."""
    schema = json.loads((DEPLOY.parent / "tests/deploy/data/compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    broken: dict[str, Any] = json.loads(json.dumps(COMPOSE))
    broken["services"]["service"]["healthchek"] = {}
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["service"]["depends_on"]["migrate"]["condition"] = "whenever"
    assert not validator.is_valid(broken)


def test_compose_orders_postgres_then_migrations_then_the_service() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"db", "migrate", "service"}
    # Over TCP: a socket check passes while the entrypoint's first-start server (socket only)
    # runs, and the migration that follows is refused (`make images` saw it happen).
    assert re.search(r"pg_isready -h \S+ ", " ".join(services["db"]["healthcheck"]["test"]))
    # The host may run its own PostgreSQL on 5432: the stack's database is never published.
    assert "ports" not in services["db"]
    migrate, service = services["migrate"], services["service"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert service["depends_on"]["db"]["condition"] == "service_healthy"
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert migrate["build"]["target"] == "service"
    assert migrate["build"]["target"] in STAGES
    assert services["meter"]["build"]["target"] == "meter"
    parser = server_cli.build_parser()
    assert parser.parse_args(migrate["command"]).command == "migrate"
    assert parser.parse_args(service["command"]).command == "serve"
    meter_args = meter_cli.build_parser().parse_args(services["meter"]["command"])
    assert meter_args.subcommand == "sidecar"
    assert meter_args.simulate
    # The service and the migration reach the same database.
    assert migrate["environment"]["THERMOLEDGER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert (
        service["environment"]["THERMOLEDGER_DATABASE_URL"]
        == migrate["environment"]["THERMOLEDGER_DATABASE_URL"]
    )


def test_the_documented_commands_exist() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "docker compose up" in readme
    assert "make images" in readme
    builds = re.findall(r"^\s*(?:docker|podman) build (.+)$", readme, flags=re.MULTILINE)
    assert len(builds) >= 3
    for line in builds:
        words = shlex.split(line)
        assert words[words.index("--target") + 1] in STAGES


# -- make images ----------------------------------------------------------------------------------

IMAGES_SH = DEPLOY / "images.sh"


def test_make_images_runs_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^images:\n\tdeploy/images\.sh$", makefile, flags=re.MULTILINE)
    assert os.access(IMAGES_SH, os.X_OK)
    assert "make images" in (ROOT / ".ci/run").read_text(encoding="utf-8")


def test_make_images_says_where_the_recipe_is_missing(tmp_path: Path) -> None:
    """Without ../shared/tools/oci it stops at once, exit 2, and says how to point at it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
    env["THERMOLEDGER_OCI_TOOLS"] = str(tmp_path / "no-such-recipe")
    result = subprocess.run(
        ["bash", str(IMAGES_SH)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "no-such-recipe" in result.stderr
    assert "THERMOLEDGER_OCI_TOOLS" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_installed_packages_carry_every_data_file() -> None:
    """The images install a wheel, not the source tree: a template, a data table or a mako
    file that ``[tool.setuptools.package-data]`` does not name is missing from the image."""
    package_data: dict[str, list[str]] = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    missing = []
    for top in sorted({p.rstrip("*").rstrip(".") for p in patterns}):
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT)
            covered = False
            for depth in range(1, len(relative.parts)):
                package = ".".join(relative.parts[:depth])
                inside = Path(*relative.parts[depth:])
                if any(inside.match(glob) for glob in package_data.get(package, [])):
                    covered = True
            if not covered:
                missing.append(str(relative))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
