"""Pod → GPU mapping: pod-resources first, then dcgm-exporter labels, then the annotation."""

from __future__ import annotations

from triserve.gpu.backend import GpuIdentity
from triserve.node_agent.dcgm import parse_dcgm
from triserve.node_agent.gpumap import GpuIndex, map_pods
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.stages import ServingPod

IDX = GpuIndex([GpuIdentity(i, f"GPU-{i}aaa", "H100", f"0000:0{i}:00.0") for i in range(3)])


def pod(name: str, stage: str, gpus: tuple[str, ...] | None = None) -> ServingPod:
    return ServingPod("omni", name, stage, gpu_ids=gpus, containers=("engine",))


def test_pod_resources_win_and_a_shared_gpu_hosts_both_stages() -> None:
    pods = [pod("talker-0", "talker", ("2",)), pod("c2w-0", "code2wav")]
    podres = [
        ContainerGpus("omni", "talker-0", "engine", "nvidia.com/gpu", ("GPU-1AAA",)),
        ContainerGpus("omni", "c2w-0", "engine", "nvidia.com/gpu", ("GPU-1aaa",)),
    ]
    mapping = map_pods(pods, IDX, podres, None)
    assert [p.pod.stage for p in mapping[1]] == ["talker", "code2wav"]
    assert {p.source for p in mapping[1]} == {"pod-resources"} and 2 not in mapping


def test_dcgm_labels_then_annotation_are_fallbacks() -> None:
    dcgm = parse_dcgm('DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-0aaa",pod="thinker-0",'
                      'namespace="omni",container="engine"} 1980\n', 0.0, "node-1",
                      accept_unlabelled=True)  # fmt: skip
    pods = [pod("thinker-0", "thinker"), pod("talker-0", "talker", ("GPU-2aaa",))]
    mapping = map_pods(pods, IDX, [], dcgm, trusted_namespaces=frozenset({"omni"}))
    assert mapping[0][0].source == "dcgm" and mapping[2][0].source == "annotation"


def test_unmappable_pods_are_reported() -> None:
    why: list[str] = []
    mapping = map_pods([pod("x", "thinker", ("7",))], IDX, None, None,
                       on_unmapped=lambda p, reason: why.append(reason),
                       trusted_namespaces=frozenset({"omni"}))  # fmt: skip
    assert mapping == {} and "omni/x" in why[0]


def test_an_untrusted_namespace_cannot_attach_itself_to_a_gpu_by_annotation() -> None:
    # A CPU-only pod of another team names the thinker's GPU: without trust it is ignored,
    # and the reason tells the admin which policy field would allow it.
    tenant = ServingPod("team-b", "intruder", "talker", gpu_ids=("0",), containers=("c",))
    podres = [ContainerGpus("omni", "thinker-0", "engine", "nvidia.com/gpu", ("GPU-0aaa",))]
    why: list[str] = []
    mapping = map_pods([pod("thinker-0", "thinker"), tenant], IDX, podres, None,
                       on_unmapped=lambda p, reason: why.append(reason))  # fmt: skip
    assert [p.pod.ref for p in mapping[0]] == ["omni/thinker-0"]
    assert "spec.gpuAnnotations.trustedNamespaces" in why[0] and "team-b" in why[0]


def test_a_trusted_annotation_never_claims_a_gpu_another_namespace_holds() -> None:
    tenant = ServingPod("team-b", "shared", "talker", gpu_ids=("0", "1"), containers=("c",))
    podres = [ContainerGpus("omni", "thinker-0", "engine", "nvidia.com/gpu", ("GPU-0aaa",))]
    trusted = frozenset({"team-b"})
    mapping = map_pods([tenant], IDX, podres, None, trusted_namespaces=trusted)
    assert 0 not in mapping  # pod-resources shows omni's pod there
    assert [p.pod.ref for p in mapping[1]] == ["team-b/shared"]  # a GPU nobody else holds
