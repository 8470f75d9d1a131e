"""``thermoledger run | sidecar | push | status``: exit codes, signals, summaries, the spool.

Wrappers that must receive signals run as real processes; the rest call `meters.cli.main` in
this process. Children are short Python one-liners. Every wait is bounded; nothing asserts on
durations.
"""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.liveserver import LiveServer, free_port, migrate_and_issue_token
from tests.support import dbutil
from thermoledger.meters import cli
from thermoledger.meters.runid import canonical_run_id
from thermoledger.meters.settings import FootprintSettings, SettingsError
from thermoledger.meters.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
PY = sys.executable
FAST = ["--interval", "0.01", "--chunk", "0.05", "--upload-timeout", "5"]
_LAUNCHER_VARS = ("LOCAL_RANK", "RANK", "SLURM_", "OMPI_", "PMI_", "MPI_", "TORCHELASTIC_")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
]


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_LAUNCHER_VARS):
            monkeypatch.delenv(name)


def run_main(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), env=dict(os.environ) if env is None else env, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def spawn(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "thermoledger.meters.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_status(spool_dir: Path, run_id: str) -> tuple[str, int | None]:
    with Spool.in_directory(spool_dir) as spool:
        record = spool.run_status(run_id)
    assert record is not None
    return record.status, record.exit_code


def wait_for_line(stream: IO[str], text: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        line = stream.readline()
        if text in line:
            return
        assert line, f"stream ended before {text!r}"
    raise AssertionError(f"no {text!r} within {WAIT_S} s")


# -- run: exit codes, summary, spool ------------------------------------------------------------


@pytest.mark.parametrize(
    ("child", "expected", "status"),
    [
        ("pass", 0, "finished"),
        ("raise SystemExit(3)", 3, "failed"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 143, "failed"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137, "failed"),
    ],
    ids=["0", "3", "sigterm", "sigkill"],
)
def test_run_returns_the_childs_exit_code_and_records_the_run(
    tmp_path: Path, child: str, expected: int, status: str
) -> None:
    run_id = str(uuid.uuid4())
    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--run-id", run_id,
        "--", PY, "-c", f"import time; time.sleep(0.2); {child}",
    )  # fmt: skip
    assert code == expected
    assert run_status(tmp_path, run_id) == (status, expected)
    assert f"run {run_id}" in err
    assert ("finished (exit 0)" if expected == 0 else f"failed (exit {expected})") in err
    for column in ("device", "energy J", "kWh", "mean W", "peak W", "duration s", "method"):
        assert column in err
    assert "total" in err
    assert "devices read by: simulated\n" in err
    assert "SIMULATED devices: these figures are not measurements." in err
    assert "offline: the run is in the spool" in err
    with Spool.in_directory(tmp_path) as spool:
        assert spool.chunks(run_id)


def test_the_child_joins_the_run_and_knows_its_node_is_metered(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    code, _, _ = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path / "spool"), "--run-id", "job-1",
        "--", PY, "-c",
        "import os, sys; open(sys.argv[1], 'w').write('\\n'.join(os.environ.get(k, '') for k in "
        "('THERMOLEDGER_RUN_ID', 'THERMOLEDGER_NODE_METER', 'THERMOLEDGER_SPOOL_DIR')))",
        str(seen),
    )  # fmt: skip
    assert code == 0
    run_id, mark, spool_dir = seen.read_text().split("\n")
    assert run_id == canonical_run_id("job-1")
    assert mark.split(":")[0] == os.uname().nodename
    assert spool_dir == str(tmp_path / "spool")


def _nothing_here(tmp_path: Path) -> dict[str, str]:
    """The environment of a node with no readable domain: an empty sysfs (this test host has
    no NVIDIA driver; on one that has, the callers skip)."""
    (tmp_path / "sys").mkdir()
    return {**os.environ, "THERMOLEDGER_SYSFS_ROOT": str(tmp_path / "sys")}


@pytest.mark.parametrize(("command", "expected"), [(["true"], 0), ([PY, "-c", "exit(3)"], 3)])
def test_where_nothing_is_measurable_the_job_runs_unmetered_and_nothing_is_recorded(
    tmp_path: Path, command: list[str], expected: int
) -> None:
    """No NVIDIA GPU, no RAPL, no hwmon: never simulated devices; one line, no run spooled."""
    spool_dir = tmp_path / "spool"
    done = subprocess.run(
        [PY, "-m", "thermoledger.meters.cli", "run", *FAST, "--spool-dir", str(spool_dir),
         "--", *command],
        env=_nothing_here(tmp_path), capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT,
    )  # fmt: skip
    if "nothing measurable" not in done.stderr:
        pytest.skip(f"this host has something measurable: {done.stderr.strip()[:200]}")
    assert done.returncode == expected  # the job's exit code, unchanged
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("thermoledger: run ")
    assert "nothing measurable on this node" in lines[0]
    assert "--cpu-tdp-w" in lines[0]
    assert "simulat" not in done.stderr.lower()
    assert not spool_dir.exists()  # no run in the spool, no outbox


def test_a_cpu_tdp_meters_an_estimate_labelled_as_such(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    code, _, err = run_main(
        "run", *FAST, "--cpu-tdp-w", "120", "--spool-dir", str(tmp_path / "spool"),
        "--run-id", run_id, "--", PY, "-c", "import time; time.sleep(0.2)",
        env=_nothing_here(tmp_path),
    )  # fmt: skip
    if "ESTIMATE" not in err:
        pytest.skip(f"this host has something measurable: {err.strip()[:200]}")
    assert code == 0
    assert "devices read by: estimate: CPU utilisation × 120 W TDP (not a measurement)" in err
    assert "cpu-estimate" in err  # the device's line
    assert "estimate" in err.split("cpu-estimate", 1)[1].splitlines()[0]  # its method
    assert "simulat" not in err.lower()
    with Spool.in_directory(tmp_path / "spool") as spool:
        assert {c.payload["method"] for c in spool.chunks(run_id)} == {"estimate"}


def test_a_command_that_does_not_exist_exits_127(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--run-id", run_id,
        "--", str(tmp_path / "no-such-program"),
    )  # fmt: skip
    assert code == 127
    assert "cannot run" in err
    assert run_status(tmp_path, run_id) == ("failed", 127)


def test_bad_options_exit_2_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, _, err = run_main(
        "run", "--simulate", "--interval", "-1", "--spool-dir", str(tmp_path),
        "--", PY, "-c", f"open({str(marker)!r}, 'w')",
    )  # fmt: skip
    assert code == 2
    assert "interval_s" in err
    assert not marker.exists()
    with pytest.raises(SystemExit) as exit_info:
        run_main("run", "--simulate", "--spool-dir", str(tmp_path))
    assert exit_info.value.code == 2


def test_another_local_rank_runs_the_child_without_metering(tmp_path: Path) -> None:
    env = {**os.environ, "LOCAL_RANK": "2"}
    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--", PY, "-c", "exit(5)",
        env=env,
    )  # fmt: skip
    assert code == 5
    assert "no device was metered by this process" in err
    assert not (tmp_path / "spool.sqlite3").exists()


# -- run: signals -------------------------------------------------------------------------------

CHILD_WITH_HANDLER = """
import signal, sys, time
def bye(signum, frame):
    print(f"child got {signum}", flush=True)
    sys.exit(7)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
time.sleep(60)
"""


def test_sigterm_to_the_wrapper_is_forwarded_and_its_exit_code_returned(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    wrapper = spawn(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--run-id", run_id,
        "--", PY, "-c", CHILD_WITH_HANDLER,
    )  # fmt: skip
    try:
        assert wrapper.stdout is not None
        wait_for_line(wrapper.stdout, "ready")
        wrapper.send_signal(signal.SIGTERM)
        out, err = wrapper.communicate(timeout=WAIT_S)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 7, err
    assert f"child got {int(signal.SIGTERM)}" in out
    assert run_status(tmp_path, run_id) == ("failed", 7)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_child_killed_by_a_forwarded_signal_gives_128_plus_n(
    tmp_path: Path, signum: signal.Signals
) -> None:
    run_id = str(uuid.uuid4())
    wrapper = spawn(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--run-id", run_id,
        "--", PY, "-c", "import time; print('ready', flush=True); time.sleep(60)",
    )  # fmt: skip
    try:
        assert wrapper.stdout is not None
        wait_for_line(wrapper.stdout, "ready")
        wrapper.send_signal(signum)
        _, err = wrapper.communicate(timeout=WAIT_S)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 128 + signum, err
    assert run_status(tmp_path, run_id) == ("failed", 128 + signum)
    assert "total" in err  # the wrapper survived to write its summary


def test_a_signal_while_finishing_cuts_the_upload_short_but_not_the_flush(
    tmp_path: Path,
) -> None:
    run_id = str(uuid.uuid4())
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the final upload would retry
    wrapper = spawn(
        "run", "--simulate", *FAST, "--upload-timeout", "600", "--server", dead, "--token", "t",
        "--spool-dir", str(tmp_path), "--run-id", run_id,
        "--", PY, "-c",
        # deaf to SIGTERM, so a signal forwarded before it exits cannot change its code
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(0.3); "
        "print('bye', flush=True)",
    )  # fmt: skip
    try:
        assert wrapper.stdout is not None
        wait_for_line(wrapper.stdout, "bye")
        deadline = time.monotonic() + WAIT_S
        while wrapper.poll() is None:  # until the wrapper is finishing and hears it
            assert time.monotonic() < deadline, "the wrapper kept uploading"
            wrapper.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        _, err = wrapper.communicate(timeout=WAIT_S)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 0, err  # the child's code, not the signal's
    assert "cut short" in err
    assert "NOT fully uploaded" in err
    assert run_status(tmp_path, run_id) == ("finished", 0)
    with Spool.in_directory(tmp_path) as spool:
        assert spool.counts(run_id).pending == len(spool.chunks(run_id)) > 0


def test_on_a_terminal_the_child_owns_it_and_a_status_line_is_shown(tmp_path: Path) -> None:
    """Under a pty: the child reads the terminal (no SIGTTIN stop), the status line is drawn."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    wrapper = subprocess.Popen(
        [PY, "-m", "thermoledger.meters.cli", "run", "--simulate", *FAST,
         "--spool-dir", str(tmp_path), "--", PY, "-c", "print('got', input())"],
        cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, preexec_fn=controlling_terminal,
    )  # fmt: skip
    os.close(slave)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + WAIT_S
        while text not in seen:
            assert time.monotonic() < deadline, f"no {text!r} in {seen!r}"
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the pty closed: the wrapper is gone
                    break

    try:
        read_until(b"[thermoledger]")  # the status line, drawn while the child waits
        os.write(master, b"hello\n")
        read_until(b"got hello")
        assert wrapper.wait(timeout=WAIT_S) == 0
        read_until(b"total")
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait(timeout=WAIT_S)
        os.close(master)


# -- sidecar ------------------------------------------------------------------------------------


def test_the_sidecar_meters_until_sigterm_then_finishes_the_run(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    sidecar = spawn(
        "sidecar", "--run-id", run_id, "--simulate", *FAST, "--spool-dir", str(tmp_path)
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert sidecar.poll() is None, sidecar.communicate()
            if (tmp_path / "spool.sqlite3").exists():
                with Spool.in_directory(tmp_path) as spool:
                    if len(spool.chunks(run_id)) >= 2:
                        break
            assert time.monotonic() < deadline, "the sidecar sealed no chunk"
            time.sleep(0.05)
        sidecar.send_signal(signal.SIGTERM)
        _, err = sidecar.communicate(timeout=WAIT_S)
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    assert sidecar.returncode == 0, err
    assert run_status(tmp_path, run_id) == ("finished", None)
    assert "stopped by SIGTERM" in err


# -- push and status ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    directory = tmp_path_factory.mktemp("cli-live")
    url = dbutil.sqlite_url(directory)
    token = migrate_and_issue_token(url)
    server = LiveServer(url, directory / "server.log")
    server.start()
    try:
        yield server, token
    finally:
        server.stop()


def test_status_and_push_of_an_offline_run(tmp_path: Path, live: tuple[LiveServer, str]) -> None:
    server, token = live
    spool = str(tmp_path)
    assert run_main("status", "--spool-dir", spool)[1].startswith("no spool")
    run_id = str(uuid.uuid4())
    assert run_main(
        "run", "--simulate", *FAST, "--spool-dir", spool, "--run-id", run_id,
        "--", PY, "-c", "import time; time.sleep(0.3)",
    )[0] == 0  # fmt: skip
    with Spool.in_directory(tmp_path) as s:
        chunks = len(s.chunks(run_id))

    code, out, _ = run_main("status", "--spool-dir", spool)
    assert code == 0
    (line,) = [row for row in out.splitlines() if run_id in row]
    fields = line.split()  # run id, status, exit, date, time, pending, acked, refused, msgs
    assert fields[1:3] == ["finished", "0"]
    assert fields[5:8] == [str(chunks), "0", "0"]

    code, _, err = run_main("push", "--spool-dir", spool)
    assert code == 2
    assert "no server" in err

    dead = f"http://127.0.0.1:{free_port()}"
    code, out, _ = run_main("push", "--server", dead, "--token", token, "--spool-dir", spool,
                            "--timeout", "0.2")  # fmt: skip
    assert code == 1
    assert f"remaining: {chunks} chunk(s)" in out
    assert "stopped by: ConnectError" in out

    code, out, _ = run_main("push", "--server", server.url, "--token", token, "--spool-dir", spool)
    assert code == 0, out
    assert f"{chunks} chunk(s) sent ({chunks} stored, 0 duplicates)" in out
    assert "remaining: 0 chunk(s), 0 message(s); rejected: 0" in out

    code, out, _ = run_main("push", "--server", server.url, "--token", token, "--spool-dir", spool)
    assert code == 0
    assert "0 chunk(s) sent" in out
    code, out, _ = run_main("status", "--spool-dir", spool)
    assert "total: 0 pending" in out


def test_a_wrapper_uploads_in_the_background(tmp_path: Path, live: tuple[LiveServer, str]) -> None:
    server, token = live
    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--server", server.url,
        "--token", token, "--", PY, "-c", "import time; time.sleep(0.3)",
    )  # fmt: skip
    assert code == 0
    assert "uploaded:" in err
    assert "0 duplicates" in err


# -- formatting ---------------------------------------------------------------------------------


def test_energy_is_formatted_for_people() -> None:
    assert cli.format_energy(812.0) == "812 J"
    assert cli.format_energy(3210.0) == "3.21 kJ"
    assert cli.format_energy(4.5e6) == "4.5 MJ"
    assert cli.format_energy(float("nan")) == "n/a"


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["python", "train.py", "--lr", "3"], "train.py"),
        (["python3", "-u", "/x/y/train.py"], "train.py"),
        (["python", "-m", "pkg.train"], "pkg.train"),
        (["python", "-c", "pass"], "python -c"),
        (["torchrun", "--nproc-per-node", "8", "train.py", "--cfg", "x.yaml"], "train.py"),
        (["/usr/bin/bash", "job.sh"], "bash"),
    ],
)
def test_the_default_run_name_comes_from_the_command(command: list[str], name: str) -> None:
    assert cli._default_name(command) == name


# -- cost and CO2e in the summary ---------------------------------------------------------------

# 3 significant figures printed: at most half a unit in the last place, relative to a leading 1
PRINTED_REL = 6e-3
FOOTPRINT_VARS = ("GRID_INTENSITY_G_PER_KWH", "PUE", "TARIFF_USD_PER_KWH")


def clean_env(**settings: str) -> dict[str, str]:
    """os.environ without THERMOLEDGER_* (a developer's shell must not leak in), plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOLEDGER_")}
    env.update({f"THERMOLEDGER_{k}": v for k, v in settings.items()})
    return env


def printed_total(err: str) -> tuple[float, float, float]:
    """Energy, band low and band high of the summary's total row, J, as printed."""
    match = re.search(r"^  total\s+(\S+)\s.*\[(\S+), (\S+)\]$", err, re.MULTILINE)
    assert match, err
    energy_j, low_j, high_j = (float(g) for g in match.groups())
    return energy_j, low_j, high_j


def test_cost_and_co2e_match_the_printed_energy(tmp_path: Path) -> None:
    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path),
        "--grid-intensity", "481", "--pue", "1.1", "--tariff", "0.12",
        "--", PY, "-c", "import time; time.sleep(0.2)",
        env=clean_env(),
    )  # fmt: skip
    assert code == 0, err
    energy_j, low_j, high_j = printed_total(err)
    assert energy_j > 0
    facility_kwh = [e / 3.6e6 * 1.1 for e in (energy_j, low_j, high_j)]

    cost = re.search(
        r"^  cost   (\S+) USD \((\S+) Wh × PUE 1\.10 at 0\.12 USD/kWh\); "
        r"band \[(\S+), (\S+)\] USD$",
        err,
        re.MULTILINE,
    )
    assert cost, err
    usd, energy_wh, low_usd, high_usd = (float(g) for g in cost.groups())
    assert energy_wh == pytest.approx(energy_j / 3600, rel=PRINTED_REL)
    assert [usd, low_usd, high_usd] == pytest.approx(
        [kwh * 0.12 for kwh in facility_kwh], rel=PRINTED_REL
    )

    co2e = re.search(
        r"^  CO2e   (\S+) g location-based \((\S+) Wh × PUE 1\.10 at 481 g/kWh; "
        r"region as configured\); band \[(\S+), (\S+)\] g$",
        err,
        re.MULTILINE,
    )
    assert co2e, err
    g, energy_wh, low_g, high_g = (float(x) for x in co2e.groups())
    assert [g, low_g, high_g] == pytest.approx([kwh * 481 for kwh in facility_kwh], rel=PRINTED_REL)
    assert low_g <= g <= high_g
    # after the table, before the spool line
    assert err.index("  total ") < err.index("  cost ") < err.index("  offline:")


def test_settings_come_from_the_environment_and_flags_win(tmp_path: Path) -> None:
    env = clean_env(TARIFF_USD_PER_KWH="0.2", PUE="2")
    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--pue", "1.25",
        "--", PY, "-c", "import time; time.sleep(0.1)",
        env=env,
    )  # fmt: skip
    assert code == 0, err
    assert "× PUE 1.25 at 0.2 USD/kWh" in err
    assert "CO2e" not in err  # no intensity configured: none guessed

    code, _, err = run_main(
        "run", "--simulate", *FAST, "--spool-dir", str(tmp_path),
        "--", PY, "-c", "import time; time.sleep(0.1)",
        env=clean_env(GRID_INTENSITY_G_PER_KWH="30"),
    )  # fmt: skip
    assert code == 0, err
    assert "× PUE 1.00, IT energy only at 30 g/kWh" in err
    assert "  cost " not in err


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--pue", "0.9"], {}, "--pue"),
        (["--grid-intensity", "-1"], {}, "--grid-intensity"),
        (["--tariff", "-0.01"], {}, "--tariff"),
        (["--tariff", "nan"], {}, "--tariff"),
        (["--grid-intensity", "inf"], {}, "--grid-intensity"),
        ([], {"PUE": "abc"}, "THERMOLEDGER_PUE"),
        ([], {"GRID_INTENSITY_G_PER_KWH": "-5"}, "THERMOLEDGER_GRID_INTENSITY_G_PER_KWH"),
        ([], {"TARIFF_USD_PER_KWH": "inf"}, "THERMOLEDGER_TARIFF_USD_PER_KWH"),
    ],
)
def test_bad_cost_or_carbon_settings_exit_2_naming_them(
    tmp_path: Path, flags: list[str], env: dict[str, str], named: str
) -> None:
    marker = tmp_path / "ran"
    code, _, err = run_main(
        "run", "--simulate", *flags, "--spool-dir", str(tmp_path),
        "--", PY, "-c", f"open({str(marker)!r}, 'w')",
        env=clean_env(**env),
    )  # fmt: skip
    assert code == 2
    assert named in err
    assert "Traceback" not in err
    assert not marker.exists()
    code, _, err = run_main(
        "sidecar", "--simulate", *flags, "--spool-dir", str(tmp_path), env=clean_env(**env)
    )
    assert code == 2
    assert named in err
    assert not (tmp_path / "spool.sqlite3").exists()


def test_an_unparsable_flag_is_refused_by_argparse(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main("run", "--simulate", "--tariff", "cheap", "--", PY, "-c", "pass")
    assert exit_info.value.code == 2


def test_without_intensity_or_tariff_there_is_no_cost_or_co2e(tmp_path: Path) -> None:
    argv = ["run", "--simulate", *FAST, "--spool-dir", str(tmp_path), "--pue", "1.5"]
    code, _, err = run_main(*argv, "--", PY, "-c", "pass", env=clean_env())
    assert code == 0, err
    assert "  total " in err
    assert not [line for line in err.splitlines() if "cost" in line or "CO2e" in line]
    code, _, err = run_main(*argv, "-v", "--", PY, "-c", "pass", env=clean_env())
    assert code == 0, err
    (hint,) = [line for line in err.splitlines() if "cost and CO2e" in line]
    assert "not configured" in hint
    assert not [line for line in err.splitlines() if line.startswith(("  cost   ", "  CO2e   "))]


def test_footprint_lines_against_analytic_figures() -> None:
    # 36 kJ = 10 Wh; × PUE 1.5 = 15 Wh; at 0.2 USD/kWh = 0.003 USD; at 400 g/kWh = 6 g
    footprint = FootprintSettings(grid_intensity_g_per_kwh=400, pue=1.5, tariff_usd_per_kwh=0.2)
    cost, co2e = cli.render_footprint(36e3, 32.4e3, 39.6e3, footprint)
    assert cost == (
        "  cost   0.00300 USD (10.0 Wh × PUE 1.50 at 0.2 USD/kWh); band [0.00270, 0.00330] USD"
    )
    assert co2e == (
        "  CO2e   6.00 g location-based (10.0 Wh × PUE 1.50 at 400 g/kWh; region as configured); "
        "band [5.40, 6.60] g"
    )
    (big,) = cli.render_footprint(7.2e9, 7.2e9, 7.2e9, FootprintSettings(tariff_usd_per_kwh=0.1))
    assert big.startswith("  cost   200 USD (2.00 MWh × PUE 1.00, IT energy only at 0.1 USD/kWh)")
    assert cli.render_footprint(1.0, 1.0, 1.0, FootprintSettings(pue=1.2)) == []


def test_footprint_settings_resolve_and_validate() -> None:
    env = {
        f"THERMOLEDGER_{k}": v for k, v in zip(FOOTPRINT_VARS, ("250", "1.3", "0.1"), strict=True)
    }
    assert FootprintSettings.resolve(env=env) == FootprintSettings(250.0, 1.3, 0.1)
    assert FootprintSettings.resolve(env=env, pue=1.0).pue == 1.0
    unset = FootprintSettings.resolve(env={})
    assert unset == FootprintSettings(None, 1.0, None)
    assert not unset.configured
    assert FootprintSettings(grid_intensity_g_per_kwh=0.0).configured  # zero is a value
    with pytest.raises(SettingsError, match="--pue / THERMOLEDGER_PUE"):
        FootprintSettings(pue=float("nan"))
    with pytest.raises(SettingsError, match="THERMOLEDGER_TARIFF_USD_PER_KWH must be a number"):
        FootprintSettings.resolve(env={"THERMOLEDGER_TARIFF_USD_PER_KWH": "1,5"})
