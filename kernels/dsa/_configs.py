"""How a launcher picks kernel configs: by the compute capability of the tensors' device.

Every kernel keeps one list of candidate `triton.Config`s. `allowed_configs` filters it for a capability with two
named predicates, so that an Ada (sm_89) run never picks a config tuned for an H100:

- `fits_ada_shared_memory`: the config's estimated shared memory fits 101,376 bytes (99 KiB), Ada's per-block limit.
  tests/kernels/test_sm89_fit.py compiles every config that survives for sm_89 and checks the real figure.
- `needs_hopper`: configs a kernel lists as Hopper-only are dropped below sm_90. These are large tiles that ptxas
  reports spilling for sm_89, whose mma.sync keeps both operands and the accumulator in registers; Hopper's wgmma
  reads an operand from shared memory.

Under `TRITON_INTERPRET=1` the list collapses to the one `INTERPRETER` config per kernel: the interpreter's cost is
per program and per loop step, so it wants large tiles, and benchmarking configs there would be meaningless.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import triton

ADA_SHARED_MEMORY_BYTES = 101_376  # sm_89 opt-in shared memory per block

Capability = tuple[int, int]
SharedMemoryEstimate = Callable[[triton.Config], int]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=16)
def device_capability(index: int) -> Capability:
    major, minor = torch.cuda.get_device_capability(index)
    return (major, minor)


@functools.lru_cache(maxsize=16)
def multiprocessor_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


_ASSUMED: list[Capability] = []


@contextlib.contextmanager
def assume_capability(capability: Capability) -> Iterator[None]:
    """Select configs as a device of `capability` would, on the GPU at hand: benchmarks run the configs Ada
    (sm_89) may select on a Hopper card this way. Every autotune key holds the capability, so configs chosen
    under one never answer for the other."""
    _ASSUMED.append(capability)
    try:
        yield
    finally:
        _ASSUMED.pop()


def tensor_capability(tensor: torch.Tensor) -> Capability | None:
    """The capability of the tensor's CUDA device (or the one assumed), None for the interpreter's CPU tensors."""
    if tensor.device.type != "cuda":
        return None
    if _ASSUMED:
        return _ASSUMED[-1]
    return device_capability(tensor.device.index if tensor.device.index is not None else torch.cuda.current_device())


def capability_key(tensor: torch.Tensor) -> int:
    """major * 10 + minor, 0 for the interpreter: an autotune key argument."""
    cap = tensor_capability(tensor)
    return 0 if cap is None else cap[0] * 10 + cap[1]


def sm_count(tensor: torch.Tensor) -> int:
    if tensor.device.type != "cuda":
        return 4  # the interpreter: any small number keeps split heuristics exercised
    return multiprocessor_count(tensor.device.index if tensor.device.index is not None else torch.cuda.current_device())


_PERSISTENT: dict[tuple[str, str, int | None], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def persistent_zeros(device: torch.device, name: str, size: int) -> torch.Tensor:
    """A zeroed int32 buffer of at least `size` that lives as long as the process, one per (name, device). The
    kernels that use one put every element they touched back to zero before they finish, so no launch clears
    it and a captured graph holds no memset. Calls that share a buffer must not run at once on two streams."""
    key = (name, device.type, device.index)
    buffer = _PERSISTENT.get(key)
    if buffer is None or buffer.numel() < size:
        if buffer is not None:
            _RETIRED.append(buffer)  # a captured graph may still use it: never free it
        buffer = torch.zeros(max(size, 4096), dtype=torch.int32, device=device)
        _PERSISTENT[key] = buffer
    return buffer


def require_fp8_capability(tensor: torch.Tensor, op: str) -> None:
    cap = tensor_capability(tensor)
    if cap is not None and cap < (8, 9):
        raise RuntimeError(
            f"{op} needs float8 e4m3 tensor-core support (sm_89 Ada or newer); this GPU is sm_{cap[0]}{cap[1]}"
        )


def fits_ada_shared_memory(config: triton.Config, estimate: SharedMemoryEstimate) -> bool:
    return estimate(config) <= ADA_SHARED_MEMORY_BYTES


def needs_hopper(config: triton.Config, hopper_only: Sequence[triton.Config]) -> bool:
    return any(config is c for c in hopper_only)


def allowed_configs(
    candidates: Sequence[triton.Config],
    capability: Capability,
    estimate: SharedMemoryEstimate,
    hopper_only: Sequence[triton.Config] = (),
) -> list[triton.Config]:
    """The configs a device of `capability` may select. Below sm_90 both predicates apply."""
    if capability >= (9, 0):
        return list(candidates)
    return [c for c in candidates if fits_ada_shared_memory(c, estimate) and not needs_hopper(c, hopper_only)]


def make_pruner(
    candidates: Sequence[triton.Config],
    interpreter_config: triton.Config,
    estimate: SharedMemoryEstimate,
    device_arg: str,
    hopper_only: Sequence[triton.Config] = (),
) -> Callable[..., list[triton.Config]]:
    """An `early_config_prune` for `triton.autotune` that filters by the device of `named_args[device_arg]`."""

    def prune(configs: Sequence[triton.Config], named_args: dict[str, Any], **_: Any) -> list[triton.Config]:
        cap = tensor_capability(named_args[device_arg])
        if cap is None:
            return [interpreter_config]
        allowed = allowed_configs(candidates, cap, estimate, hopper_only)
        if not allowed:
            raise RuntimeError(f"no kernel config fits sm_{cap[0]}{cap[1]}; add a smaller one to the candidates")
        return allowed

    return prune


def autotune_configs(candidates: Sequence[triton.Config], interpreter_config: triton.Config) -> list[triton.Config]:
    """The list handed to `triton.autotune`: the candidates, or the interpreter's one config (Triton 3.7's
    autotuner benchmarks whenever it holds more than one config, and the interpreter has no timer)."""
    return [interpreter_config] if interpreting() else list(candidates)
