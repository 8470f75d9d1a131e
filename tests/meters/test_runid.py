"""Run-id resolution (every node of a job agrees) and the one-meter-per-node election."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoledger.meters.runid import (
    NODE_METER_ENV,
    RUN_ID_NAMESPACE,
    canonical_run_id,
    elect,
    local_size,
    node_meter_mark,
    resolve_run_id,
)

FIXED = "7a1f3c9e-0b4d-4e2a-9f61-2c8d5e7b9a10"


def test_the_namespace_is_the_documented_one() -> None:
    expected = uuid.uuid5(uuid.NAMESPACE_URL, "https://thermoledger.invalid/ns/run-id")
    assert expected == RUN_ID_NAMESPACE


def test_precedence_explicit_env_slurm_torchelastic_new() -> None:
    env = {
        "THERMOLEDGER_RUN_ID": "from-env",
        "SLURM_JOB_ID": "4242",
        "TORCHELASTIC_RUN_ID": "elastic-1",
    }
    assert resolve_run_id(FIXED, env).source == "explicit"
    assert resolve_run_id(None, env).source == "THERMOLEDGER_RUN_ID"
    assert resolve_run_id("  ", env).source == "THERMOLEDGER_RUN_ID"  # blank is not given
    del env["THERMOLEDGER_RUN_ID"]
    assert resolve_run_id(None, env).source == "SLURM_JOB_ID"
    del env["SLURM_JOB_ID"]
    assert resolve_run_id(None, env).source == "TORCHELASTIC_RUN_ID"
    del env["TORCHELASTIC_RUN_ID"]
    fresh = resolve_run_id(None, env)
    assert fresh.source == "new"
    assert uuid.UUID(fresh.run_id).version == 4
    assert resolve_run_id(None, env).run_id != fresh.run_id


def test_a_uuid_is_kept_in_canonical_form() -> None:
    identity = resolve_run_id(FIXED.upper(), {})
    assert identity.run_id == FIXED
    assert identity.given == FIXED.upper()
    assert canonical_run_id("{" + FIXED + "}") == FIXED


def test_every_node_of_a_slurm_job_agrees_whatever_its_step() -> None:
    node_a = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "alps", "SLURM_STEP_ID": "0"}
    node_b = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "alps", "SLURM_PROCID": "17"}
    prolog = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "alps"}
    ids = {resolve_run_id(None, env).run_id for env in (node_a, node_b, prolog)}
    assert len(ids) == 1
    assert ids == {str(uuid.uuid5(RUN_ID_NAMESPACE, "slurm:alps:4242"))}
    other_cluster = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "daint"}
    other_job = {"SLURM_JOB_ID": "4243", "SLURM_CLUSTER_NAME": "alps"}
    assert resolve_run_id(None, other_cluster).run_id not in ids
    assert resolve_run_id(None, other_job).run_id not in ids
    assert resolve_run_id(None, node_a).given == "4242"


def test_torchruns_default_rendezvous_id_is_not_a_run_id() -> None:
    assert resolve_run_id(None, {"TORCHELASTIC_RUN_ID": "none"}).source == "new"
    named = resolve_run_id(None, {"TORCHELASTIC_RUN_ID": "job-17"})
    assert named.run_id == str(uuid.uuid5(RUN_ID_NAMESPACE, "torchelastic:job-17"))


def test_a_named_run_id_maps_the_same_from_the_flag_and_the_environment() -> None:
    flag = resolve_run_id("llama-7", {})
    env = resolve_run_id(None, {"THERMOLEDGER_RUN_ID": "llama-7"})
    assert flag.run_id == env.run_id == str(uuid.uuid5(RUN_ID_NAMESPACE, "llama-7"))


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda s: s.strip()))
def test_any_text_maps_to_a_stable_uuid(text: str) -> None:
    run_id = canonical_run_id(text)
    assert str(uuid.UUID(run_id)) == run_id
    assert canonical_run_id(text) == run_id
    assert canonical_run_id(run_id) == run_id


def test_an_empty_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        canonical_run_id("  ")


# -- election -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "sample", "record"),
    [
        ({}, True, True),
        ({"LOCAL_RANK": "0", "RANK": "0"}, True, True),
        ({"LOCAL_RANK": "0", "RANK": "8"}, True, False),  # rank 0 of the second node
        ({"LOCAL_RANK": "3", "RANK": "3"}, False, False),
        ({"LOCAL_RANK": "1", "RANK": "0"}, False, True),  # odd, but rank 0 still records
        ({"SLURM_LOCALID": "2", "SLURM_PROCID": "2"}, False, False),
        ({"SLURM_LOCALID": "0", "SLURM_PROCID": "4"}, True, False),
        ({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}, False, True),
        ({"LOCAL_RANK": "x", "SLURM_LOCALID": "1"}, False, True),  # malformed: next variable
    ],
)
def test_only_local_rank_0_samples_and_only_rank_0_records(
    env: dict[str, str], sample: bool, record: bool
) -> None:
    election = elect(env, host="node-1")
    assert (election.sample, election.record_work) == (sample, record)
    assert election.reason


def test_a_node_already_metered_is_not_sampled_again() -> None:
    marked = {NODE_METER_ENV: node_meter_mark("node-1", 4321)}
    here = elect(marked, host="node-1")
    assert not here.sample
    assert here.record_work
    assert "already metered" in here.reason
    # srun/ssh copy the environment to other nodes: the mark counts only where it was set
    assert elect(marked, host="node-2").sample


def test_the_mark_names_host_and_pid() -> None:
    assert node_meter_mark("gpu-7", 99) == "gpu-7:99"


@pytest.mark.parametrize(
    ("tasks", "node", "expected"),
    [
        ("4", "0", (4, "SLURM_TASKS_PER_NODE")),
        ("2(x3),1", "0", (2, "SLURM_TASKS_PER_NODE")),
        ("2(x3),1", "2", (2, "SLURM_TASKS_PER_NODE")),
        ("2(x3),1", "3", (1, "SLURM_TASKS_PER_NODE")),
        ("2(x3),1", "4", (None, None)),  # past the list: says nothing
        ("2(x3", "0", (None, None)),  # malformed: says nothing
        ("2(x3),1", "", (None, None)),  # no SLURM_NODEID: cannot pick an entry
    ],
)
def test_slurm_tasks_per_node_is_read_at_this_nodes_entry(
    tasks: str, node: str, expected: tuple[int | None, str | None]
) -> None:
    assert local_size({"SLURM_TASKS_PER_NODE": tasks, "SLURM_NODEID": node}) == expected


def test_an_explicit_local_size_wins_over_slurm_tasks_per_node() -> None:
    env = {"SLURM_NTASKS_PER_NODE": "8", "SLURM_TASKS_PER_NODE": "2(x3)", "SLURM_NODEID": "0"}
    assert local_size(env) == (8, "SLURM_NTASKS_PER_NODE")
