"""examples/gpu-pod.yaml asks for what the node groups really offer."""

from __future__ import annotations

import yaml

from constructs_lib.gpu_nodegroups import GPU_TAINT_KEY, GPU_TAINT_VALUE, WORKLOAD_LABEL
from ml_stacks.app_factory import PROJECT_ROOT
from tests.conftest import resources_of_type

EXAMPLE = PROJECT_ROOT / "examples" / "gpu-pod.yaml"
_K8S_EFFECT = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute",
               "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


def load_pod() -> dict:
    [pod] = list(yaml.safe_load_all(EXAMPLE.read_text()))
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    return pod


def tolerated(toleration: dict, taint: dict) -> bool:
    """Kubernetes' toleration matching, for one taint."""
    if toleration.get("effect") not in (None, "", _K8S_EFFECT[taint["Effect"]]):
        return False
    if toleration.get("key") != taint["Key"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value") == taint["Value"]


def test_example_pod_lands_on_a_synthesized_gpu_node_group(all_templates) -> None:
    spec = load_pod()["spec"]
    for stage in ("dev", "staging", "prod"):
        nodegroups = resources_of_type(all_templates[(stage, "eks")], "AWS::EKS::Nodegroup").values()
        matching = [n["Properties"] for n in nodegroups
                    if all(n["Properties"]["Labels"].get(k) == v for k, v in spec["nodeSelector"].items())]
        assert matching, stage
        for props in matching:
            # Every taint of the selected groups is tolerated, so it schedules.
            assert props["Taints"], "a GPU group is tainted"
            assert all(any(tolerated(t, taint) for t in spec["tolerations"]) for taint in props["Taints"])


def test_example_pod_tolerates_the_gpu_taint_and_asks_for_a_gpu() -> None:
    spec = load_pod()["spec"]
    assert spec["nodeSelector"] == {WORKLOAD_LABEL: "gpu-inference"}
    assert {"key": GPU_TAINT_KEY, "operator": "Equal", "value": GPU_TAINT_VALUE,
            "effect": "NoSchedule"} in spec["tolerations"]
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_a_pod_without_the_toleration_would_not_be_scheduled_on_gpu_nodes() -> None:
    taint = {"Key": GPU_TAINT_KEY, "Value": GPU_TAINT_VALUE, "Effect": "NO_SCHEDULE"}
    assert not tolerated({"key": "other", "operator": "Exists"}, taint)
    assert not tolerated({"key": GPU_TAINT_KEY, "operator": "Equal", "value": "false"}, taint)
    assert tolerated({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}, taint)
