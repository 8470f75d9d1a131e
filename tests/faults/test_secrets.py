"""Issue 13, items 6 and 8 (first bullet): secrets, file modes and the metrics address.

* The job that ``thermoledger run`` wraps never sees the API token, whatever its source
  (``--token``, ``--token-file``, ``THERMOLEDGER_TOKEN``, ``THERMOLEDGER_TOKEN_FILE``): not in its
  environment, its argv, the wrapper's environment under ``/proc`` (the wrapper is non-dumpable)
  or the spool's files. A `Meter` in the job still gets its phases to the service, which the
  wrapper uploads (on SQLite and on PostgreSQL).
* ``--token-file`` and ``THERMOLEDGER_TOKEN_FILE``: a missing or empty file exits 2 naming the
  flag or the variable before the job starts; a file other users can read is a warning.
* The meter's spool and control files and the server's SQLite file, with their ``-wal``,
  ``-shm`` and ``-journal`` files, are 0600, and the directories made for them 0700, under a
  umask that would allow more (there is no file of ours on PostgreSQL).
* The meter's metrics endpoint listens on 127.0.0.1 unless told otherwise; the deployments
  that Prometheus scrapes from outside ask for 0.0.0.0.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.liveserver import ROOT
from tests.faults.harness import LiveService, clean_env
from tests.support.deploy import DEPLOY, yaml_documents
from thermoledger._private_files import create_private_file
from thermoledger.db import migrate
from thermoledger.db.engine import default_sqlite_url, make_engine
from thermoledger.meters import cli
from thermoledger.meters.control import ControlStore
from thermoledger.meters.settings import ObserveSettings, default_spool_dir
from thermoledger.meters.spool import Spool

PY = sys.executable
FAST = ["--simulate", "--interval", "0.01", "--chunk", "0.05", "--upload-timeout", "0.5"]
WAIT_S = 60.0

# The job: what it can find of the wrapper's secrets, as JSON in the file argv[1].
SNOOP = """
import json, os, sys

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None

parent = os.getppid()
with open(sys.argv[1], "w") as out:
    json.dump({
        "env": dict(os.environ),
        "argv": sys.argv,
        "cmdline": read("/proc/self/cmdline"),
        "parent_environ": read(f"/proc/{parent}/environ"),
        "parent_cmdline": read(f"/proc/{parent}/cmdline"),
    }, out)
"""


def run_main(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), env=env, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def token_file(directory: Path, content: str, mode: int = 0o600) -> Path:
    path = directory / "token"
    path.write_text(content)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: without explicit modes, new files would be 0644 (SQLite) or 0666, dirs 0777."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- the job never sees the token -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("source", ["--token", "--token-file", "TOKEN", "TOKEN_FILE"])
def test_the_wrapped_job_cannot_find_the_token(tmp_path: Path, source: str) -> None:
    token = f"tl_{uuid.uuid4().hex}"
    path = token_file(tmp_path, token + "\n")
    env = clean_env() | {
        "THERMOLEDGER_SERVER": "http://127.0.0.1:9",  # nothing there: the job must not get it
        "THERMOLEDGER_METRICS_TOKEN": "service-side-secret",  # another credential
        "THERMOLEDGER_LOG_FORMAT": "text",  # not a credential: passed on
    }
    flags: list[str] = []
    match source:
        case "--token":
            flags = ["--token", token]
        case "--token-file":
            flags = ["--token-file", str(path)]
        case "TOKEN":
            env["THERMOLEDGER_TOKEN"] = token
        case "TOKEN_FILE":
            env["THERMOLEDGER_TOKEN_FILE"] = str(path)
    spool, seen = tmp_path / "spool", tmp_path / "seen.json"
    wrapper = subprocess.run(
        [PY, "-m", "thermoledger.meters.cli", "run", *FAST, *flags, "--spool-dir", str(spool),
         "-v", "--", PY, "-c", SNOOP, str(seen)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False,
    )  # fmt: skip
    assert wrapper.returncode == 0, wrapper.stderr
    job: dict[str, Any] = json.loads(seen.read_text())
    ours = {k for k in job["env"] if k.startswith("THERMOLEDGER_")}
    assert ours == {
        "THERMOLEDGER_RUN_ID",
        "THERMOLEDGER_SPOOL_DIR",
        "THERMOLEDGER_NODE_METER",
        "THERMOLEDGER_LOG_FORMAT",
    }
    assert token not in json.dumps(job["env"])
    assert "service-side-secret" not in json.dumps(job["env"])
    assert token not in json.dumps(job["argv"])
    assert token not in job["cmdline"]
    # The one place nothing can hide: the wrapper's own command line, as `ps` shows it (the
    # flag's help says so).
    assert (token in job["parent_cmdline"]) == (source == "--token")
    # The wrapper's environment under /proc: unreadable for a job of the same user, the wrapper
    # being non-dumpable. Root reads every process's anyway: there the test can only check that
    # the wrapper made itself so.
    assert "it is not dumpable" in wrapper.stderr
    if os.geteuid() != 0:
        assert job["parent_environ"] is None
    for file in spool.iterdir():  # nor is it written where the job can read
        assert token.encode() not in file.read_bytes(), file


@pytest.mark.slow
def test_a_wrapped_jobs_phases_reach_the_service_though_it_holds_no_token(
    service: LiveService, tmp_path: Path
) -> None:
    """The server and the token from the environment (a token file): the job's `Meter` records
    into the wrapper's spool and the wrapper uploads it."""
    seen = tmp_path / "seen.json"
    job = (
        "import json, os, sys, time\n"
        "from thermoledger import Meter\n"
        "json.dump(dict(os.environ), open(sys.argv[1], 'w'))\n"
        "with Meter('from-the-job') as m:\n"
        "    with m.phase('epoch-1'):\n"
        "        m.add_tokens(500)\n"
        "        time.sleep(0.3)\n"
    )
    env = clean_env() | {
        "THERMOLEDGER_SERVER": service.url,
        "THERMOLEDGER_TOKEN_FILE": str(token_file(tmp_path, service.token)),
    }
    run_id = str(uuid.uuid4())
    code, _, err = run_main(
        "run", *FAST, "--upload-timeout", str(WAIT_S), "--run-id", run_id, "--name", "wrapped",
        "--spool-dir", str(tmp_path / "spool"), "--", PY, "-c", job, str(seen),
        env=env,
    )  # fmt: skip
    assert code == 0, err
    assert "uploaded:" in err
    job_env = json.loads(seen.read_text())
    assert not {"THERMOLEDGER_SERVER", "THERMOLEDGER_TOKEN_FILE", "THERMOLEDGER_TOKEN"} & set(
        job_env
    )
    assert service.token not in json.dumps(job_env)
    report = service.get(f"runs/{run_id}/report")
    (phase,) = report["energy"]["by_phase"]
    assert (phase["name"], phase["tokens"]) == ("epoch-1", 500)


@pytest.mark.slow
def test_push_reads_its_token_from_a_file(service: LiveService, tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    code, _, err = run_main(
        "run", *FAST, "--spool-dir", spool, "--", PY, "-c", "import time; time.sleep(0.2)",
        env=clean_env(),
    )  # fmt: skip
    assert code == 0, err
    path = token_file(tmp_path, service.token + "\n")
    code, out, err = run_main(
        "push", "--server", service.url, "--token-file", str(path), "--spool-dir", spool,
        env=clean_env(),
    )  # fmt: skip
    assert code == 0, out + err
    assert "remaining: 0 chunk(s), 0 message(s); rejected: 0" in out
    assert "can be read by other users" not in err


# -- token files ----------------------------------------------------------------------------------


def _job_marker_run(tmp_path: Path, *flags: str, env: dict[str, str]) -> tuple[int, str, bool]:
    """``run`` with a job that leaves a marker: (exit code, stderr, whether the job ran)."""
    marker = tmp_path / "ran"
    code, _, err = run_main(
        "run", *FAST, *flags, "--spool-dir", str(tmp_path / "spool"),
        "--", PY, "-c", f"open({str(marker)!r}, 'w').close()",
        env=env,
    )  # fmt: skip
    return code, err, marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "cannot read the token"), ("", "is empty"), (" \n\n", "is empty")],
)
@pytest.mark.parametrize("given_as", ["--token-file", "THERMOLEDGER_TOKEN_FILE"])
def test_a_missing_or_empty_token_file_exits_2_naming_it_before_the_job(
    tmp_path: Path, content: str | None, why: str, given_as: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    flags, env = ([given_as, str(path)], clean_env())
    if given_as.startswith("THERMOLEDGER_"):
        flags, env = [], clean_env() | {given_as: str(path)}
    code, err, ran = _job_marker_run(tmp_path, *flags, env=env)
    assert code == 2
    assert not ran
    assert given_as in err
    assert str(path) in err
    assert why in err


def test_a_token_file_others_can_read_is_a_warning_naming_it(tmp_path: Path) -> None:
    path = token_file(tmp_path, "tl_secret_in_a_shared_file", mode=0o644)
    # push reads the token first, then stops at the missing server
    code, _, err = run_main("push", "--token-file", str(path), "--spool-dir", str(tmp_path),
                            env=clean_env())  # fmt: skip
    assert code == 2
    assert f"--token-file {path} can be read by other users (mode 0644): chmod 600" in err
    assert "tl_secret_in_a_shared_file" not in err


@pytest.mark.slow
def test_a_job_runs_with_a_token_file_others_can_read_after_a_warning(tmp_path: Path) -> None:
    path = token_file(tmp_path, "tl_secret", mode=0o640)
    code, err, ran = _job_marker_run(tmp_path, "--token-file", str(path), env=clean_env())
    assert (code, ran) == (0, True)
    assert "can be read by other users (mode 0640)" in err


def test_a_token_and_a_token_file_are_refused_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_main("push", "--token", "a", "--token-file", str(tmp_path / "f"), env=clean_env())
    assert exited.value.code == 2
    assert "--token-file: not allowed with argument --token" in capsys.readouterr().err
    both = {"THERMOLEDGER_TOKEN": "a", "THERMOLEDGER_TOKEN_FILE": str(tmp_path / "f")}
    code, _, err = run_main("push", "--server", "http://127.0.0.1:9", env=clean_env() | both)
    assert code == 2
    assert "THERMOLEDGER_TOKEN and THERMOLEDGER_TOKEN_FILE are both set" in err


def test_a_token_file_of_two_lines_is_refused_without_showing_them(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tl_first\ntl_second\n")
    path.chmod(0o600)
    code, _, err = run_main("push", "--server", "http://127.0.0.1:9", "--token-file", str(path),
                            env=clean_env())  # fmt: skip
    assert code == 2
    assert f"--token-file {path}: must hold the token alone, on one line" in err
    assert "tl_first" not in err


# -- file modes -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_the_spool_and_control_files_are_private_with_their_sidecars(tmp_path: Path) -> None:
    state = tmp_path / "xdg-state"  # missing: the meter makes it and its thermoledger folder
    directory = default_spool_dir({"XDG_STATE_HOME": str(state)})
    with Spool.in_directory(directory) as spool, ControlStore.in_directory(directory) as control:
        spool.open_run("r-1", {"name": "x"})
        control.put("r-1", "run", {"name": "x"})
        files = {p.name: mode_of(p) for p in directory.iterdir()}
    assert set(files) >= {
        "spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm",
        "control.sqlite3", "control.sqlite3-wal", "control.sqlite3-shm",
    }  # fmt: skip
    assert files == dict.fromkeys(files, 0o600)
    assert (mode_of(state), mode_of(directory)) == (0o700, 0o700)


@pytest.mark.usefixtures("permissive_umask")
def test_a_spool_directory_the_user_made_keeps_its_mode(tmp_path: Path) -> None:
    given = tmp_path / "team-spool"
    given.mkdir(mode=0o750)
    with Spool.in_directory(given) as spool:
        spool.open_run("r-1")
    assert mode_of(given) == 0o750
    assert mode_of(given / "spool.sqlite3") == 0o600


@pytest.mark.usefixtures("permissive_umask")
def test_a_rollback_journal_takes_the_files_mode(tmp_path: Path) -> None:
    """What the two private files rely on: SQLite gives its journal the database file's mode."""
    path = tmp_path / "x.sqlite3"
    create_private_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        journal = tmp_path / "x.sqlite3-journal"
        assert journal.exists()
        assert mode_of(journal) == 0o600
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert mode_of(path) == 0o600


@pytest.mark.usefixtures("permissive_umask")
def test_the_servers_sqlite_file_and_its_sidecars_are_private(tmp_path: Path) -> None:
    data = tmp_path / "share" / "thermoledger"  # the user's data dir, missing
    url = default_sqlite_url(data)
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            connection.exec_driver_sql("INSERT INTO probe VALUES (1)")
        with engine.connect():  # open: the -wal and -shm files are there
            files = {p.name: mode_of(p) for p in data.iterdir()}
    finally:
        engine.dispose()
    assert set(files) >= {"thermoledger.db", "thermoledger.db-wal", "thermoledger.db-shm"}
    assert files == dict.fromkeys(files, 0o600)
    assert (mode_of(tmp_path / "share"), mode_of(data)) == (0o700, 0o700)


# -- the metrics address --------------------------------------------------------------------------


def test_the_metrics_address_is_the_loopback_unless_told() -> None:
    assert ObserveSettings().metrics_addr == "127.0.0.1"
    assert ObserveSettings.resolve(env={"THERMOLEDGER_METRICS_PORT": "9464"}).metrics_addr == (
        "127.0.0.1"
    )
    told = {"THERMOLEDGER_METRICS_ADDR": "0.0.0.0"}
    assert ObserveSettings.resolve(env=told).metrics_addr == "0.0.0.0"
    assert ObserveSettings.resolve(env=told, metrics_addr="::1").metrics_addr == "::1"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "bound"), [([], "127.0.0.1"), (["--metrics-addr", "0.0.0.0"], "0.0.0.0")]
)
def test_the_run_metrics_endpoint_binds_the_loopback_by_default(
    tmp_path: Path, flags: list[str], bound: str
) -> None:
    code, _, err = run_main(
        "run", *FAST, "--spool-dir", str(tmp_path), "--metrics-port", "0", *flags, "-v",
        "--", PY, "-c", "import time; time.sleep(0.3)",
        env=clean_env(),
    )  # fmt: skip
    assert code == 0, err
    assert f"metrics served at http://{bound}:" in err  # the socket's own address


def _scraped_meter_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """The containers that serve meter metrics in pods that Prometheus scrapes."""
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        for doc in yaml_documents(path):
            template = doc.get("spec", {}).get("template", {})
            annotations = template.get("metadata", {}).get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                continue
            spec = template["spec"]
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                names = {e["name"] for e in container.get("env", [])}
                args = container.get("args", []) + container.get("command", [])
                if "THERMOLEDGER_METRICS_PORT" in names or "--metrics-port" in " ".join(args):
                    yield f"{path.name}:{container['name']}", container


def test_deployments_scraped_from_outside_ask_for_every_interface() -> None:
    containers = dict(_scraped_meter_containers())
    assert len(containers) >= 2  # the DaemonSet's meter and the Job's sidecar
    for where, container in containers.items():
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        args = " ".join(container.get("args", []) + container.get("command", []))
        assert env.get("THERMOLEDGER_METRICS_ADDR") == "0.0.0.0" or (
            "--metrics-addr 0.0.0.0" in args
        ), where
    with (DEPLOY / "compose.yaml").open(encoding="utf-8") as f:
        meter = yaml.safe_load(f)["services"]["meter"]
    assert meter["environment"]["THERMOLEDGER_METRICS_ADDR"] == "0.0.0.0"
    assert all(str(p).startswith("127.0.0.1:") for p in meter["ports"])  # the host's loopback
