"""The Ada launcher: the dry run prints the flag set, refuses sm_90-only choices, and never imports sglang or torch."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from sparsegate.backends.sglang.flags import ADA_FLAGS
from sparsegate.backends.sglang.launch import LaunchError, plan

ADA = {f.name: f.value for f in ADA_FLAGS}


def dry_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['launch', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('sparsegate.backends.sglang.launch', run_name='__main__')\n"
        "finally:\n"
        "    heavy = sorted(m for m in ('sglang', 'torch', 'triton') if m in sys.modules)\n"
        "    print('imported:', heavy, file=sys.stderr)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_")}
    return subprocess.run(
        [sys.executable, "-c", code, *args, "--print-command"],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def parse(line: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    rest = [w for w in words if not ("=" in w and not w.startswith("-"))]
    return env, rest


def test_dry_run_prints_the_ada_command_without_importing_sglang_or_torch() -> None:
    done = dry_run("--model-path", "/models/GLM-5.1-FP8", "--tp-size", "8", "--mem-fraction-static=0.85")
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stderr
    env, words = parse(done.stdout.strip())
    assert env == {"SGLANG_PLUGINS": "sparsegate", "SGLANG_DSA_FUSE_TOPK": "false"}
    assert words[:3] == [sys.executable, "-m", "sglang.launch_server"]
    argv = words[3:]
    assert argv[:5] == ["--model-path", "/models/GLM-5.1-FP8", "--tp-size", "8", "--mem-fraction-static=0.85"]
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert flags == ADA
    assert flags["--dsa-prefill-backend"] == "triton"  # sglang 0.5.23 refuses triton_sparse_mla below sm_90
    assert flags["--dsa-topk-backend"] == "torch"


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--dsa-decode-backend", "flashmla_sparse", "sm_90+"),
        ("--dsa-prefill-backend", "fa3", "sm_90+"),
        ("--dsa-prefill-backend", "triton_sparse_mla", "below sm_90"),
        ("--dsa-topk-backend", "sgl-kernel", "128 KB of shared memory"),
        ("--fp8-gemm-backend", "deep_gemm", "DeepGEMM"),
        ("--moe-runner-backend", "flashinfer_trtllm", "sm_100"),
        ("--kv-cache-dtype", "bf16", "656 bytes"),
        ("--page-size", "1", "8448 bytes"),
        ("--attention-backend", "flashmla", "re-registered"),
    ],
    ids=lambda v: str(v).lstrip("-"),
)
def test_refuses_what_cannot_run_on_ada(flag: str, value: str, reason: str) -> None:
    with pytest.raises(LaunchError, match=reason):
        plan(["--model-path", "/m", f"{flag}={value}"], {})
    done = dry_run("--model-path", "/m", flag, value)
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"Use {flag} {ADA[flag]}" in done.stderr


def test_keeps_accepted_values_and_the_nsa_alias() -> None:
    launch = plan(["--model-path", "/m", "--attention-backend", "nsa", "--fp8-gemm-backend=cutlass"], {})
    assert launch.argv.count("--attention-backend") == 1 and "nsa" in launch.argv
    assert "--fp8-gemm-backend=cutlass" in launch.argv and "--fp8-gemm-backend" not in launch.added


def test_environment_merges_the_allow_list_and_refuses_the_fused_top_k() -> None:
    launch = plan(["--model-path", "/m"], {"SGLANG_PLUGINS": "metrics-plugin", "SGLANG_DSA_FUSE_TOPK": "false"})
    assert launch.env == {"SGLANG_PLUGINS": "metrics-plugin,sparsegate"}
    assert plan(["--model-path", "/m"], {"SGLANG_PLUGINS": "sparsegate"}).env == {"SGLANG_DSA_FUSE_TOPK": "false"}
    with pytest.raises(LaunchError, match="SGLANG_DSA_FUSE_TOPK=true"):
        plan(["--model-path", "/m"], {"SGLANG_DSA_FUSE_TOPK": "true"})


@pytest.mark.parametrize(
    "args",
    [[], ["--tp-size", "8"], ["--model-path"], ["--model-path", "/m", "--page-size", "64", "--page-size=32"]],
    ids=["empty", "no-model", "model-without-value", "conflicting-page-size"],
)
def test_refuses_incomplete_or_conflicting_arguments(args: list[str]) -> None:
    with pytest.raises(LaunchError):
        plan(args, {})


def test_help_lists_every_ada_default_with_its_reason() -> None:
    result = dry_run("--help")
    assert result.returncode == 0
    for flag in ADA_FLAGS:
        assert f"{flag.name} {flag.value}: {flag.why}" in result.stdout
    assert "SGLANG_PLUGINS=sparsegate" in result.stdout
