"""What users install: one import name, every data file, working entry points, no extras needed.

The sdist and the wheel are built from the files git tracks (a clean clone's view: nothing
untracked can leak in), the wheel from the unpacked sdist as pip would. The wheel is then
unpacked into a target directory and run by an interpreter that sees nothing else of this
checkout or its virtual environment (``python -S``): the base dependencies are offered one by
one, by their own installed files, and the extras (pint, FastAPI, SQLAlchemy…) not at all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("accounting", "meters", "db", "service", "migrations", "integrations")
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    site: Path  # the wheel, installed with --target
    base_deps: Path  # the base dependencies' own files, and nothing else


def _tracked_files() -> list[str]:
    done = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    )
    return [name for name in done.stdout.decode().split("\0") if name]


def _copy_tracked(dest: Path) -> None:
    for name in _tracked_files():
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():  # a tracked file deleted in the working tree is not there to copy
            shutil.copy2(src, dst)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]


def _base_closure(requirements: list[str]) -> set[str]:
    """Distributions a plain ``pip install thermoledger`` brings, found in this environment."""
    seen: set[str] = set()
    todo = [r for r in requirements if "extra ==" not in r]
    while todo:
        requirement = todo.pop()
        marker = requirement.partition(";")[2]
        if marker and "python_version" in marker and "<" in marker:
            continue  # backports for older Pythons than ours
        name = _requirement_name(requirement).lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        todo.extend(r for r in metadata.requires(name) or [] if "extra ==" not in r)
    return seen


def _link_distribution(name: str, dest: Path) -> None:
    dist = metadata.distribution(name)
    for entry in {Path(str(f)).parts[0] for f in dist.files or []}:
        if entry.endswith((".dist-info", ".pth")) or entry in ("..", "__pycache__"):
            continue
        src = Path(str(dist.locate_file(entry)))
        if src.exists() and not (dest / entry).exists():
            (dest / entry).symlink_to(src)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("packaging")
    clone = tmp / "clone"
    _copy_tracked(clone)
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(clone)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]  # fmt: skip
    base_deps = tmp / "base-deps"
    base_deps.mkdir()
    for name in _base_closure(requires):
        _link_distribution(name, base_deps)
    return Built(wheel=wheel, sdist=sdist, site=site, base_deps=base_deps)


def _run_bare(
    built: Built, args: list[str], cwd: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The installed wheel and its base dependencies only; no site-packages, no checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THERMOLEDGER_", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join([str(built.site), str(built.base_deps)])
    env["HOME"] = str(cwd)  # the demo and the meter may look for user directories
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
        check=check, timeout=300,
    )  # fmt: skip


def test_the_wheel_installs_one_import_name_with_every_file(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as zf:
        names = zf.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(top_level).decode().split() == ["thermoledger"]
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"thermoledger"}
    shipped = set(names)
    wanted = {
        f"thermoledger/{name}"
        for name in _tracked_files()
        if name.split("/")[0] in PACKAGES and "__pycache__" not in name
    }
    assert wanted, "no package files found: the check itself is broken"
    assert sorted(wanted - shipped) == []
    assert "thermoledger/py.typed" in shipped
    assert "thermoledger/__init__.py" in shipped


def test_the_sdist_holds_what_the_wheel_was_built_from(built: Built) -> None:
    import tarfile

    with tarfile.open(built.sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    for data in (
        "thermoledger/accounting/data/catalog.toml",
        "thermoledger/py.typed",
        "thermoledger/service/pages/templates/report.html.j2",
        "pyproject.toml",
    ):
        assert data in members


def test_thermoledger_imports_beside_a_users_meters_db_and_service(
    built: Built, tmp_path: Path
) -> None:
    """The names a training script's folder commonly holds must not shadow ours."""
    (tmp_path / "meters.py").write_text("class AverageMeter:\n    pass\n")
    (tmp_path / "service.py").write_text("raise SystemExit('the user service.py was imported')\n")
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "__init__.py").write_text("raise SystemExit('the user db was imported')\n")
    probe = (
        "import sys\n"
        "from thermoledger import Meter, meter\n"
        "import thermoledger, thermoledger.meters.api as api\n"
        "import meters\n"  # the user's own module still wins for its bare name
        "assert meters.AverageMeter and Meter is api.Meter and callable(meter)\n"
        f"assert thermoledger.__file__.startswith({str(built.site)!r}), thermoledger.__file__\n"
        "print('ok')\n"
    )
    done = _run_bare(built, ["-c", probe], tmp_path)
    assert done.stdout.strip() == "ok", done.stderr


def test_the_entry_points_run_and_the_demo_names_its_extra(built: Built, tmp_path: Path) -> None:
    with zipfile.ZipFile(built.wheel) as zf:
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        scripts: dict[str, str] = {}
        for line in zf.read(entry_points).decode().splitlines():
            name, equals, target = line.partition("=")
            if equals:
                scripts[name.strip()] = target.strip()
    assert set(scripts) == {"thermoledger", "thermoledger-server"}
    for target in scripts.values():
        module, function = target.split(":")
        code = f"import sys; from {module} import {function}; sys.argv[0] = 'x'; {function}()"
        done = _run_bare(built, ["-c", code, "--help"], tmp_path, check=False)
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout
    # control: this environment really lacks the extras
    for extra in ("pint", "fastapi", "sqlalchemy", "alembic"):
        missing = _run_bare(built, ["-c", f"import {extra}"], tmp_path, check=False)
        assert missing.returncode != 0, f"{extra} is importable: the test would prove nothing"
    # The demo runs the embedded service (`make demo` installs the [service] extra): without it,
    # it names the extra instead of a traceback.
    demo = _run_bare(built, ["-m", "thermoledger.service.cli", "demo"], tmp_path, check=False)
    assert demo.returncode == 1, demo.stderr
    assert "pip install 'thermoledger[service]'" in demo.stderr
    assert "Traceback" not in demo.stderr


def test_a_missing_extra_says_which_to_install(built: Built, tmp_path: Path) -> None:
    done = _run_bare(built, ["-c", "import thermoledger.accounting.units"], tmp_path, check=False)
    assert done.returncode != 0
    assert "pip install 'thermoledger[units]'" in done.stderr


def test_the_callbacks_name_their_extras_in_a_bare_install(built: Built, tmp_path: Path) -> None:
    """`thermoledger.integrations` imports without any framework; each callback names its extra."""
    done = _run_bare(built, ["-c", "import thermoledger.integrations"], tmp_path)
    assert done.returncode == 0, done.stderr
    for name, extra in (
        ("ThermoledgerCallback", "thermoledger[hf]"),
        ("ThermoledgerLightningCallback", "thermoledger[lightning]"),
    ):
        code = f"from thermoledger.integrations import {name}"
        missing = _run_bare(built, ["-c", code], tmp_path, check=False)
        assert missing.returncode != 0
        assert f"pip install '{extra}'" in missing.stderr
