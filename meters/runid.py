"""Run ids shared by every node of a job, and the election of one meter per node.

Run id
    A run is identified by a client-made UUID, so meters on many nodes can join one run without
    talking to each other. `resolve_run_id` takes the first of:

    1. an explicit id (``--run-id``, ``Meter(run_id=...)``);
    2. ``THERMOLEDGER_RUN_ID`` (``thermoledger run`` sets it for its child);
    3. ``SLURM_JOB_ID`` (with ``SLURM_CLUSTER_NAME`` when set): every node, step and the
       prolog/epilog of one job see the same job id, so the job is the run. Step ids are left
       out on purpose: a prolog sidecar has no step, and it must agree with the job's meters;
    4. ``TORCHELASTIC_RUN_ID`` (torchrun's ``--rdzv-id``; its default ``"none"`` is ignored, or
       every torchrun job would share one run);
    5. a new random UUID.

    An id that is not a UUID is mapped to ``uuid5(RUN_ID_NAMESPACE, name)``: deterministic, so
    every node that sees the same job id computes the same run id. The name is the id as given
    for (1) and (2) (``--run-id llama-7`` and ``THERMOLEDGER_RUN_ID=llama-7`` agree), and
    ``slurm:<cluster>:<job>`` / ``torchelastic:<id>`` for (3) and (4).

One meter per node
    A GPU metered by two processes is counted twice: the most common complaint about the peers
    (eight ranks each metering the whole node). `elect` decides what a meter in this process
    does:

    - it **samples** only when it is the node's local rank 0 (``LOCAL_RANK``, ``SLURM_LOCALID``,
      ``OMPI_COMM_WORLD_LOCAL_RANK`` or ``MPI_LOCALRANKID``; none set means a single process)
      and no other meter already covers this node: ``thermoledger run`` marks its child with
      ``THERMOLEDGER_NODE_METER=<host>:<pid>`` (a sidecar can be declared the same way); the
      mark counts only on the host that set it, since launchers copy the environment to other
      nodes;
    - it **records phases and work** only on the job's global rank 0 (``RANK``,
      ``SLURM_PROCID``, ``OMPI_COMM_WORLD_RANK`` or ``PMI_RANK``; unset means rank 0), since
      declared work is a run total and a phase is one window of the whole job;
    - otherwise it does nothing, and says so once in the log.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "GLOBAL_RANK_VARS",
    "LOCAL_RANK_VARS",
    "LOCAL_SIZE_VARS",
    "NODE_METER_ENV",
    "RUN_ID_ENV",
    "RUN_ID_NAMESPACE",
    "Election",
    "RunIdSource",
    "RunIdentity",
    "canonical_run_id",
    "elect",
    "local_rank",
    "local_size",
    "node_meter_mark",
    "resolve_run_id",
]

RUN_ID_NAMESPACE: Final = uuid.UUID("1129c22e-55a2-553c-ac4c-22f91001401a")
"""Namespace of the uuid5 run ids (``uuid5(NAMESPACE_URL, "https://thermoledger.invalid/ns/run-id")``;
fixed forever: changing it would split every running job in two)."""
RUN_ID_ENV: Final = "THERMOLEDGER_RUN_ID"
NODE_METER_ENV: Final = "THERMOLEDGER_NODE_METER"
LOCAL_RANK_VARS: Final = (
    "LOCAL_RANK",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
)
GLOBAL_RANK_VARS: Final = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
# How many ranks share this node: torchrun, Slurm (--ntasks-per-node), Open MPI, MPICH/Intel MPI.
LOCAL_SIZE_VARS: Final = (
    "LOCAL_WORLD_SIZE",
    "SLURM_NTASKS_PER_NODE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
)

RunIdSource = Literal[
    "explicit", "THERMOLEDGER_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "new"
]


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """A resolved run id.

    Attributes:
        run_id: Canonical UUID text (lower case, hyphenated).
        source: Where it came from.
        given: The id as found (``"4242"`` for a SLURM job), for logs and the run's host info.
    """

    run_id: str
    source: RunIdSource
    given: str


def canonical_run_id(value: str) -> str:
    """``value`` as canonical UUID text; a non-UUID is mapped by uuid5 in `RUN_ID_NAMESPACE`.

    Raises:
        ValueError: ``value`` is empty.
    """
    text = value.strip()
    if not text:
        raise ValueError("a run id cannot be empty")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return str(uuid.uuid5(RUN_ID_NAMESPACE, text))


def resolve_run_id(
    explicit: str | None = None, env: Mapping[str, str] | None = None
) -> RunIdentity:
    """The run id, by the precedence in the module docstring.

    Args:
        explicit: An id given on purpose (flag or argument); blank counts as not given.
        env: Environment to read (default: ``os.environ``).
    """
    env = os.environ if env is None else env
    if explicit is not None and explicit.strip():
        return RunIdentity(canonical_run_id(explicit), "explicit", explicit.strip())
    given = env.get(RUN_ID_ENV, "").strip()
    if given:
        return RunIdentity(canonical_run_id(given), "THERMOLEDGER_RUN_ID", given)
    job = env.get("SLURM_JOB_ID", "").strip()
    if job:
        cluster = env.get("SLURM_CLUSTER_NAME", "").strip()
        name = f"slurm:{cluster}:{job}"
        return RunIdentity(str(uuid.uuid5(RUN_ID_NAMESPACE, name)), "SLURM_JOB_ID", job)
    elastic = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic.lower() != "none":
        return RunIdentity(
            str(uuid.uuid5(RUN_ID_NAMESPACE, f"torchelastic:{elastic}")),
            "TORCHELASTIC_RUN_ID",
            elastic,
        )
    fresh = str(uuid.uuid4())
    return RunIdentity(fresh, "new", fresh)


@dataclass(frozen=True, slots=True)
class Election:
    """What the meter in this process does.

    Attributes:
        sample: Read the devices (this process is the node's one meter).
        record_work: Record phases and declared work (this process is the job's rank 0).
        local_rank: The local rank found, if any.
        global_rank: The global rank found, if any.
        reason: One sentence for the log, saying why.
    """

    sample: bool
    record_work: bool
    local_rank: int | None
    global_rank: int | None
    reason: str


def _rank(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[int | None, str | None]:
    for name in names:
        raw = env.get(name, "").strip()
        if raw:
            try:
                return int(raw), name
            except ValueError:
                continue  # a malformed variable says nothing; the next one may
    return None, None


def local_rank(env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """This process's local rank and the variable that said it (`LOCAL_RANK_VARS`), or Nones."""
    return _rank(env, LOCAL_RANK_VARS)


def _slurm_tasks_on_this_node(env: Mapping[str, str]) -> int | None:
    """This node's entry of ``SLURM_TASKS_PER_NODE`` (``"2(x3),1"``: 2 tasks on each of the
    first three nodes, then 1), picked by ``SLURM_NODEID``; None when either is missing or
    malformed, or the node is past the list."""
    raw = env.get("SLURM_TASKS_PER_NODE", "").replace(" ", "")
    node = env.get("SLURM_NODEID", "").strip()
    if not raw or not node.isdigit():
        return None
    remaining = int(node)
    for item in raw.split(","):
        match = _TASKS_ITEM.fullmatch(item)
        if match is None:
            return None
        count, repeat = int(match.group(1)), int(match.group(2) or 1)
        if remaining < repeat:
            return count
        remaining -= repeat
    return None


_TASKS_ITEM = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def local_size(env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """How many ranks share this node and the variable that said it (`LOCAL_SIZE_VARS`, then
    Slurm's ``SLURM_TASKS_PER_NODE`` at this node's ``SLURM_NODEID``, which Slurm sets even
    without ``--ntasks-per-node``)."""
    size, name = _rank(env, LOCAL_SIZE_VARS)
    if size is None:
        tasks = _slurm_tasks_on_this_node(env)
        if tasks is not None:
            return tasks, "SLURM_TASKS_PER_NODE"
    return size, name


def node_meter_mark(host: str | None = None, pid: int | None = None) -> str:
    """The value of `NODE_METER_ENV` that says "this host is metered by process ``pid``"."""
    return f"{host or socket.gethostname()}:{os.getpid() if pid is None else pid}"


def elect(env: Mapping[str, str] | None = None, *, host: str | None = None) -> Election:
    """Decide whether this process samples and whether it records phases and work.

    Args:
        env: Environment to read (default: ``os.environ``).
        host: This host's name (default: ``socket.gethostname()``), to match the node mark.
    """
    env = os.environ if env is None else env
    host = host or socket.gethostname()
    local, local_var = _rank(env, LOCAL_RANK_VARS)
    global_, global_var = _rank(env, GLOBAL_RANK_VARS)
    record = global_ is None or global_ == 0
    mark = env.get(NODE_METER_ENV, "").strip()
    marked_host = mark.rpartition(":")[0] if ":" in mark else mark
    if mark and marked_host == host:
        reason = f"this node is already metered ({NODE_METER_ENV}={mark}): not sampling here"
        return Election(False, record, local, global_, reason)
    if local is not None and local != 0:
        reason = (
            f"{local_var}={local}: only local rank 0 samples this node "
            "(one meter per node, so no GPU is counted twice)"
        )
        return Election(False, record, local, global_, reason)
    where = f"{local_var}=0" if local_var else "no local rank set"
    reason = f"{where}: this process meters the node"
    if not record:
        reason += f"; {global_var}={global_}: phases and work are recorded by rank 0 only"
    return Election(True, record, local, global_, reason)
