"""SGLang workers: the launch flags exist in sglang 0.5.23 and carry the Ada settings; groups are coherent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.k8s import env_value, gpu_workloads, parse_flags, pod_templates, quantity

Docs = list[dict[str, Any]]

# Every flag the manifests pass, checked by hand against sglang 0.5.23 (srt/arg_groups/fields/*.py; the field
# name with dashes, except fp8_gemm_runner_backend whose cli_name is --fp8-gemm-backend). Adding a flag means
# checking it there too: a wrong flag makes every worker exit at start.
SGLANG_0_5_23_FLAGS = {
    "--model-path",
    "--served-model-name",
    "--host",
    "--port",
    "--tp-size",
    "--pp-size",
    "--nnodes",
    "--node-rank",
    "--dist-init-addr",
    "--context-length",
    "--kv-cache-dtype",
    "--page-size",
    "--attention-backend",
    "--dsa-prefill-backend",
    "--dsa-decode-backend",
    "--dsa-topk-backend",
    "--speculative-dsa-topk-backend",
    "--fp8-gemm-backend",
    "--moe-runner-backend",
    "--mem-fraction-static",
    "--enable-metrics",
    "--enable-priority-scheduling",
    "--enable-response-store",
}
DSA_PREFILL_CHOICES = {"flashmla_sparse", "flashmla_sparse_q8", "flashmla_kv", "flashmla_auto", "flashinfer_sparse_mla"}
DSA_PREFILL_CHOICES |= {"triton_sparse_mla", "fa3", "tilelang", "triton", "aiter", "trtllm", "intel_xpu"}
DSA_DECODE_CHOICES = DSA_PREFILL_CHOICES - {"triton_sparse_mla"}
# What Ada needs (shared/DSA.md section 7): no sm_90-only kernel may be auto-selected.
ADA_FLAGS = {
    "--kv-cache-dtype": "fp8_e4m3",
    "--page-size": "64",
    "--attention-backend": "dsa",
    # "triton", not "triton_sparse_mla": 0.5.23 refuses the latter below sm_90, and the "triton" path hands the
    # paged 656-byte FP8 cache to the function our plugin replaces.
    "--dsa-prefill-backend": "triton",
    "--dsa-decode-backend": "triton",
    "--dsa-topk-backend": "torch",
    "--speculative-dsa-topk-backend": "torch",  # the MTP draft worker defaults to sgl-kernel's top-k
    "--fp8-gemm-backend": "triton",
    "--moe-runner-backend": "triton",
    "--enable-metrics": None,
    "--enable-priority-scheduling": None,
    "--enable-response-store": None,  # the gateway's Responses follow-ups need the worker to keep responses
}


def sglang_containers(docs: Docs) -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    out = []
    for w in gpu_workloads(docs):
        for label, template in pod_templates(w):
            for c in template["spec"]["containers"]:
                out.append((label, c, template, w))
    return out


@pytest.fixture(scope="session")
def workers(prod: Docs, rendered: dict[str, Docs]) -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    found = sglang_containers(prod) + sglang_containers(rendered["workers/single-node"])
    assert len(found) == 5, "two LWS (leader + worker templates) and one StatefulSet"
    return found


def test_launch_command_and_flags(workers: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]) -> None:
    for label, c, _, _ in workers:
        assert c["command"] == ["python3", "-m", "sglang.launch_server"], label
        flags = parse_flags(c["args"])
        assert set(flags) <= SGLANG_0_5_23_FLAGS, f"{label}: unknown flags {set(flags) - SGLANG_0_5_23_FLAGS}"
        for flag, value in ADA_FLAGS.items():
            assert flag in flags and flags[flag] == value, f"{label}: {flag} must be {value!r}, got {flags.get(flag)!r}"
        assert flags["--dsa-prefill-backend"] in DSA_PREFILL_CHOICES
        assert flags["--dsa-decode-backend"] in DSA_DECODE_CHOICES
        assert flags["--host"] == "0.0.0.0" and flags["--port"] == "30000"


def test_plugin_and_environment(workers: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]) -> None:
    for label, c, template, _ in workers:
        assert env_value(c, "SGLANG_PLUGINS") == "sparsegate", label
        # sglang 0.5.23: the torch top-k backend requires the unfused path.
        assert env_value(c, "SGLANG_DSA_FUSE_TOPK") == "false", label
        product = template["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        if "GeForce" in product:
            assert env_value(c, "NCCL_P2P_DISABLE") == "1", f"{label}: GeForce cards have no P2P"
        shm = [v for v in template["spec"]["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm and any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), f"{label}: no /dev/shm"


def test_parallelism_fills_the_group(workers: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]) -> None:
    for label, c, _, w in workers:
        flags = parse_flags(c["args"])
        gpus = int(quantity(c["resources"]["limits"]["nvidia.com/gpu"]))
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
        nodes = w["spec"]["leaderWorkerTemplate"]["size"] if w["kind"] == "LeaderWorkerSet" else 1
        tp, pp = int(flags["--tp-size"] or 1), int(flags.get("--pp-size") or 1)
        assert tp * pp == nodes * gpus, f"{label}: tp {tp} x pp {pp} != {nodes} nodes x {gpus} GPUs"
        assert 64 % tp == 0, f"{label}: GLM-5's 64 attention heads do not split over tp={tp}"


def test_leader_and_workers_agree(prod: Docs) -> None:
    for lws in [d for d in prod if d["kind"] == "LeaderWorkerSet"]:
        lwt = lws["spec"]["leaderWorkerTemplate"]
        (leader,) = lwt["leaderTemplate"]["spec"]["containers"]
        (worker,) = lwt["workerTemplate"]["spec"]["containers"]
        lf, wf = parse_flags(leader["args"]), parse_flags(worker["args"])
        assert lf.pop("--node-rank") == "0"
        assert wf.pop("--node-rank") == "$(LWS_WORKER_INDEX)"
        assert lf == wf, f"{lws['metadata']['name']}: leader and worker flags differ"
        assert lf["--nnodes"] == "$(LWS_GROUP_SIZE)"
        assert (lf["--dist-init-addr"] or "").startswith("$(LWS_LEADER_ADDRESS):")
        assert leader["image"] == worker["image"] and leader["env"] == worker["env"]
        assert leader["resources"] == worker["resources"]
        assert lwt["leaderTemplate"]["spec"]["nodeSelector"] == lwt["workerTemplate"]["spec"]["nodeSelector"]
        # Only the leader serves HTTP: probes and scraping there, never on ranks > 0.
        assert leader["readinessProbe"]["httpGet"]["path"] == "/health"
        assert "readinessProbe" not in worker and "ports" not in worker
        assert lwt["leaderTemplate"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert lws["spec"]["startupPolicy"] == "LeaderCreated", "LeaderReady would deadlock: workers load the model too"
        assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"


def test_manifests_agree_with_the_launchers_ada_flags(
    workers: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]],
) -> None:
    """The manifests call sglang.launch_server directly; they must carry every flag and variable our launcher
    (sparsegate.backends.sglang.launch) would add, so the two ways of starting a worker cannot drift apart."""
    from sparsegate.backends.sglang.flags import ADA_ENV
    from sparsegate.backends.sglang.flags import ADA_FLAGS as LAUNCHER_FLAGS

    for label, c, _, _ in workers:
        flags = parse_flags(c["args"])
        for flag in LAUNCHER_FLAGS:
            assert flags.get(flag.name) == flag.value, (
                f"{label}: {flag.name}={flags.get(flag.name)!r}, not {flag.value!r}"
            )
        for name, (value, _why) in ADA_ENV.items():
            assert env_value(c, name) is not None, f"{label}: {name} missing"
            if name != "SGLANG_PLUGINS":
                assert env_value(c, name) == value, f"{label}: {name}"
