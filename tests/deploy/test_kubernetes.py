"""The Kubernetes manifests: valid against the pinned Kubernetes schemas, and saying what we mean.

`kubernetes-validate` bundles the OpenAPI schemas of each Kubernetes release, so validation runs
offline. Strict mode refuses fields the schema does not know (a misspelt ``restartPolicy`` is
caught). The pinned release is the oldest one the manifests need: native sidecars (an init
container with ``restartPolicy: Always``) are on by default from 1.29.

Beyond the schema, the tests pin down the deployment rules: the meter runs unprivileged and sees
the GPUs through the NVIDIA runtime, never simulates in production, shares one run id across a
Job's pods; the service is probed on ``/healthz`` and ``/readyz``; every command line the
manifests run is accepted by our own CLI parsers.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.support.deploy import DEPLOY, yaml_documents
from thermoledger.meters import cli as meter_cli
from thermoledger.service import cli as server_cli

K8S_VERSION = "1.30.0"
MANIFESTS = sorted((DEPLOY / "kubernetes").rglob("*.yaml"))


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(DEPLOY)}#{i}", doc)
        for path in MANIFESTS
        for i, doc in enumerate(yaml_documents(path))
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion of a container's args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def test_there_are_manifests_for_each_deployment() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in _documents()}
    assert {
        ("Deployment", "thermoledger"),
        ("Service", "thermoledger"),
        ("Job", "thermoledger-migrate-0-1-0"),
        ("Job", "llm-train"),
        ("DaemonSet", "thermoledger-meter"),
    } <= kinds


@pytest.mark.parametrize(
    ("where", "doc"), _documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_manifest_is_valid_for_the_pinned_kubernetes(where: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_does_refuse_a_broken_manifest() -> None:
    """Control: strict validation catches an unknown field and a wrongly typed one."""
    job = copy.deepcopy(_one("Job", "llm-train"))
    job["spec"]["template"]["spec"]["containers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    service = copy.deepcopy(_one("Service", "thermoledger"))
    service["spec"]["ports"][0]["port"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)


def _assert_unprivileged(container: dict[str, Any], pod: dict[str, Any]) -> None:
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert security.get("runAsNonRoot") is True
    assert security.get("runAsUser", 0) != 0
    assert security.get("allowPrivilegeEscalation") is False
    assert security.get("privileged", False) is False
    assert security.get("capabilities", {}).get("drop") == ["ALL"]
    assert not security.get("capabilities", {}).get("add")
    assert pod.get("hostPID", False) is False
    assert pod.get("hostNetwork", False) is False


def _assert_sees_gpus_through_the_runtime(container: dict[str, Any]) -> None:
    env = _env(container)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    # A meter that cannot see the GPUs must fail loudly, not meter simulated devices.
    assert env["THERMOLEDGER_BACKEND"] == "nvml"
    # It asks the device plugin for nothing: the GPUs stay the trainer's.
    assert "nvidia.com/gpu" not in str(container.get("resources", {}))


def test_the_training_job_has_the_meter_as_an_unprivileged_native_sidecar() -> None:
    pod = _one("Job", "llm-train")["spec"]["template"]["spec"]
    (meter,) = [c for c in pod["initContainers"] if c["name"] == "thermoledger-meter"]
    (trainer,) = pod["containers"]
    assert meter["restartPolicy"] == "Always"  # native sidecar: stopped after the trainer
    assert meter["image"].startswith("thermoledger-meter:")
    _assert_unprivileged(meter, pod)
    _assert_sees_gpus_through_the_runtime(meter)
    assert "nvidia.com/gpu" in trainer["resources"]["limits"]
    # Same GPUs: the trainer hands its device list to the meter, which meters those.
    script = " ".join(meter["args"])
    assert "--gpus" in script
    assert "/run/thermoledger/gpus" in script
    assert "NVIDIA_VISIBLE_DEVICES" in " ".join(trainer["args"])
    # One run per Job, whatever pod or node: the Job's uid, in both containers.
    job_uid = {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}
    assert _env(meter)["THERMOLEDGER_RUN_ID"] == job_uid
    assert _env(trainer)["THERMOLEDGER_RUN_ID"] == job_uid
    # An in-process Meter in the trainer must not sample the node a second time.
    assert _env(trainer)["THERMOLEDGER_NODE_METER"] == "$(POD_NAME):sidecar"
    # The final flush and upload fit in the grace period.
    assert int(_env(meter)["THERMOLEDGER_UPLOAD_TIMEOUT_S"]) < pod["terminationGracePeriodSeconds"]


def test_the_daemonset_meters_every_gpu_of_its_node_unprivileged() -> None:
    pod = _one("DaemonSet", "thermoledger-meter")["spec"]["template"]["spec"]
    (meter,) = pod["containers"]
    _assert_unprivileged(meter, pod)
    _assert_sees_gpus_through_the_runtime(meter)
    env = {"NODE_NAME": "gpu-node-7", "POD_UID": "0b5c5a9e-0000-4000-8000-000000000001"}
    args = meter_cli.build_parser().parse_args(_expand(meter["args"], env))
    assert args.subcommand == "sidecar"
    assert args.run_id == "k8s-node:gpu-node-7:0b5c5a9e-0000-4000-8000-000000000001"
    assert int(_env(meter)["THERMOLEDGER_UPLOAD_TIMEOUT_S"]) < pod["terminationGracePeriodSeconds"]


def test_the_service_is_probed_and_migrated_by_a_job() -> None:
    deployment = _one("Deployment", "thermoledger")
    pod = deployment["spec"]["template"]["spec"]
    (service,) = pod["containers"]
    _assert_unprivileged(service, pod)
    assert service["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert service["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server_cli.build_parser().parse_args(service["args"]).command == "serve"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert _one("Service", "thermoledger")["spec"]["selector"] == selector
    job = _one("Job", "thermoledger-migrate-0-1-0")["spec"]["template"]["spec"]
    (migrate,) = job["containers"]
    assert server_cli.build_parser().parse_args(migrate["args"]).command == "migrate"
    assert migrate["image"] == service["image"]
    _assert_unprivileged(migrate, job)


def test_pods_that_serve_metrics_announce_their_port() -> None:
    for kind, name, port in (
        ("Deployment", "thermoledger", "8000"),
        ("DaemonSet", "thermoledger-meter", "9464"),
        ("Job", "llm-train", "9464"),
    ):
        template = _one(kind, name)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == port
        assert annotations["prometheus.io/path"] == "/metrics"
        containers = template["spec"]["containers"] + template["spec"].get("initContainers", [])
        ports = {str(p["containerPort"]) for c in containers for p in c.get("ports", [])}
        assert port in ports


def test_manifest_files_are_plain_yaml() -> None:
    """No templating left in them: every file parses and names its apiVersion and kind."""
    assert MANIFESTS
    for path in MANIFESTS:
        text = path.read_text(encoding="utf-8")
        assert "{{" not in text, f"{path}: templating"
        for doc in yaml_documents(path):
            assert doc.get("apiVersion"), path
            assert doc.get("kind"), path
