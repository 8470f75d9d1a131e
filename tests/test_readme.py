"""The README's commands, run as written, from its own text, in a fresh virtual environment.

The README cannot drift from the code: the commands are read out of README.md's code blocks at
test time, not copied here. A fresh copy of the working tree gets a fresh ``.venv`` through the
quick start's own ``make demo``; the *Running the service* commands and the *Metering a job*
commands and Python example then run against it, in that order, with a throwaway home directory
and database. What the test changes is only what the README leaves to the reader, each listed
in `_SUBSTITUTIONS` or `_NOT_RUN` with the reason:

* the example host ``http://ledger:8000`` and ``--port 8000`` become a free loopback port;
* ``RUN_ID`` / ``[RUN]`` become the run that the README's own ``thermoledger run`` made;
* the token that ``token create`` prints is saved where the README reads it from
  (``~/.config/thermoledger/token``), as the README tells the reader to;
* the meter uses ``THERMOLEDGER_BACKEND=simulated`` (a documented setting; no GPU here);
* ``train.py`` and the Python example's ``train_one_epoch()`` / ``tokens_seen`` are stand-ins.

A command the test does not know how to run fails the test, so a new README command is either
run here or listed with a reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Commands of the README that need what a test machine has not got, by their first words.
_NOT_RUN: dict[str, str] = {
    "thermoledger sidecar --attribute-pods": "needs a kubelet's PodResources socket",
    "pip install": "installs from PyPI by name; the fresh venv comes from `make demo`",
    "make test": "is the command that runs this test",
}


def _section(title: str) -> str:
    """The text of README section ``## title`` (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.M | re.S)


def _commands(section: str) -> list[list[str]]:
    """Each shell command of the section's ``bash`` blocks, as argv (continuations joined,
    comments dropped)."""
    commands: list[list[str]] = []
    for block in _blocks(section, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def _not_run_reason(argv: list[str]) -> str | None:
    line = shlex.join(argv).replace(".venv/bin/", "")
    return next((why for head, why in _NOT_RUN.items() if line.startswith(head)), None)


def test_the_quick_start_is_the_two_make_commands_and_ci_runs_the_second() -> None:
    commands = _commands(_section("Quick start"))
    assert commands == [["make", "demo"], ["make", "test"]]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "make test" in ci


def test_every_extra_the_readme_installs_exists() -> None:
    import tomllib

    extras = set(
        tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
            "optional-dependencies"
        ]
    )
    named: set[str] = set()
    for argv in _commands(_section("Installing")):
        assert argv[:2] == ["pip", "install"], argv
        match = re.fullmatch(r"thermoledger(?:\[([a-z,]+)\])?", argv[2])
        assert match, f"README installs {argv[2]!r}, not thermoledger"
        named.update(filter(None, (match.group(1) or "").split(",")))
    assert named, "the Installing section names no extra"
    assert named <= extras, f"README names extras pyproject.toml lacks: {named - extras}"


@dataclass
class _Fresh:
    root: Path
    env: dict[str, str]
    port: int
    demo_output: str

    def run(self, argv: list[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", _shell_line(argv)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _shell_line(argv: list[str]) -> str:
    """The line a reader types: `~` expands in the throwaway home, `$VAR` in the environment."""
    return " ".join(
        a if a.startswith("~/") else f'"{a}"' if "$" in a else shlex.quote(a) for a in argv
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_working_tree(dest: Path) -> None:
    """What a clone holds: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> _Fresh:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs make and git")
    base = tmp_path_factory.mktemp("readme")
    root = base / "thermoledger"
    _copy_working_tree(root)
    home = base / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("THERMOLEDGER_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        HOME=str(home),
        # pip's cache stays the machine's own (a fresh venv, not a cold download)
        PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        THERMOLEDGER_DATABASE_URL=f"sqlite:///{base / 'ledger.db'}",
        THERMOLEDGER_BACKEND="simulated",
    )
    # the base interpreter, not this test's venv: `make demo` builds a venv of its own; then
    # its bin/ comes first on PATH, as after `source .venv/bin/activate`
    env["PYTHON"] = str(Path(sys.base_prefix) / "bin" / "python3")
    env["PATH"] = os.pathsep.join(
        [str(root / ".venv" / "bin")]
        + [
            p
            for p in env.get("PATH", "").split(os.pathsep)
            if sys.prefix == sys.base_prefix or not p.startswith(sys.prefix)
        ]
    )
    demo = subprocess.run(
        ["make", "demo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    return _Fresh(root=root, env=env, port=_free_port(), demo_output=demo.stdout)


@pytest.mark.slow  # a fresh venv (pip, from its cache), the demo, a live server
def test_the_readme_runs_as_written_in_a_fresh_venv(fresh: _Fresh) -> None:
    assert "SIMULATED" in fresh.demo_output
    assert "covers it" in fresh.demo_output, fresh.demo_output
    assert (fresh.root / ".venv" / ".installed-service").exists()

    url = f"http://127.0.0.1:{fresh.port}"

    def substitute(argv: list[str], run_id: str | None) -> list[str]:
        out = []
        for arg in argv:
            arg = arg.removeprefix("[").removesuffix("]")  # usage syntax: an optional part
            arg = arg.replace("http://ledger:8000", url)
            if arg in ("RUN", "RUN_ID"):
                assert run_id, f"{shlex.join(argv)} needs a run made before it"
                arg = run_id
            out.append(arg)
        if out[-2:] == ["--port", "8000"]:
            out[-1] = str(fresh.port)
        return out

    service = _commands(_section("Running the service"))
    metering = _commands(_section("Metering a job"))
    assert service
    assert metering
    server: subprocess.Popen[str] | None = None
    server_log = (fresh.root / "server.log").open("w")
    later: list[list[str]] = []  # commands that name a run: after the metering section
    ran: list[str] = []
    try:
        for argv in service:
            line = shlex.join(argv)
            if _not_run_reason(argv):
                continue
            if any(a in ("RUN", "RUN_ID", "[RUN]") for a in argv):
                later.append(argv)
                continue
            argv = substitute(argv, None)
            if argv[1:2] == ["serve"]:
                server = subprocess.Popen(
                    ["bash", "-c", shlex.join(argv)],
                    cwd=fresh.root,
                    env=fresh.env,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                _wait_ready(url, server, server_log)
                ran.append(line)
                continue
            result = fresh.run(argv)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            if argv[1:3] == ["token", "create"]:
                token_file = Path(fresh.env["HOME"]) / ".config" / "thermoledger" / "token"
                token_file.parent.mkdir(parents=True)
                token_file.write_text(result.stdout.strip() + "\n")
                token_file.chmod(0o600)
            ran.append(line)
        assert server is not None, "the README's service section starts no server"

        (fresh.root / "train.py").write_text("import time\ntime.sleep(1.5)\nprint('trained')\n")
        run_id: str | None = None
        for argv in metering:
            line = shlex.join(argv)
            if _not_run_reason(argv):
                continue
            argv = substitute(argv, run_id)
            if argv[1:2] == ["sidecar"]:
                _run_until_sigterm(fresh, argv)
            else:
                result = fresh.run(argv)
                assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
                if argv[1:2] == ["run"]:
                    assert "trained" in result.stdout
                    run_id = _last_run_id(url, fresh)
            ran.append(line)
        assert run_id, "the README's metering section makes no run"

        python = _blocks(_section("Metering a job"), "python")
        assert len(python) == 1
        prelude = (
            "import os, time\n"
            "token = open(os.path.expanduser('~/.config/thermoledger/token')).read().strip()\n"
            "def train_one_epoch():\n    time.sleep(0.5)\n"
            "tokens_seen = 100_000\n"
        )
        code = prelude + python[0].replace("http://ledger:8000", url)
        result = fresh.run([str(fresh.root / ".venv" / "bin" / "python"), "-c", code])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "refused" not in (result.stdout + result.stderr).lower(), result.stderr
        assert "J" in result.stdout  # the summary's table, not a dataclass repr
        assert "RunSummary(" not in result.stdout

        for argv in later:
            result = fresh.run(substitute(argv, run_id))
            assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout}{result.stderr}"
            ran.append(shlex.join(argv))

        names = {item["name"] for item in _runs(url, fresh)}
        # the wrapper's run, the sidecar's (spooled, then `thermoledger push`) and the example's
        assert {"train.py", "llama-ft"} <= names, names
        assert len(names) >= 3, names

        report = httpx.get(
            f"{url}/api/v1/runs/{run_id}/report",
            headers={"Authorization": f"Bearer {_token(fresh)}"},
            timeout=30,
        )
        assert report.status_code == 200, report.text
        body = report.json()
        # the project's basis, set by the README's commands, priced the run
        assert body["carbon"]["location_based"] is not None
        assert body["cost"]["total_usd"] is not None
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        server_log.close()
    assert len(ran) >= 10, ran


def _token(fresh: _Fresh) -> str:
    return (Path(fresh.env["HOME"]) / ".config" / "thermoledger" / "token").read_text().strip()


def _wait_ready(url: str, server: subprocess.Popen[str], log: TextIO) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.flush()
            pytest.fail(f"the server exited: {Path(log.name).read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("the README's server did not become ready within 60 s")


def _run_until_sigterm(fresh: _Fresh, argv: list[str]) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + _shell_line(argv)],
        cwd=fresh.root,
        env={**fresh.env, "SLURM_JOB_ID": "4242"},  # as in a SLURM prolog
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err


def _runs(url: str, fresh: _Fresh) -> list[dict[str, object]]:
    runs = httpx.get(
        f"{url}/api/v1/runs",
        headers={"Authorization": f"Bearer {_token(fresh)}"},
        timeout=30,
    )
    assert runs.status_code == 200, runs.text
    items: list[dict[str, object]] = runs.json()["items"]
    return items


def _last_run_id(url: str, fresh: _Fresh) -> str:
    items = _runs(url, fresh)
    assert items, "no run reached the service"
    return str(items[0]["id"])
