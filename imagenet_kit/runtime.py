"""Where the code runs: the device, the torchrun process group and the agreements across its ranks, precision
(autocast, bf16 on CPUs), and cuDNN's algorithm choice. The environment record is ``environment.py``."""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imagenet_kit.config import ConfigError
from imagenet_kit.environment import cpu_has_native_bf16, cpu_model


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(timeout_minutes: float = 30.0) -> Runtime:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE); NCCL on GPUs, gloo on CPU.

    ``timeout_minutes`` (``train.dist_timeout_minutes``): how long a collective waits for the slowest rank."""
    if not launched_by_torchrun():
        return local_runtime()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = _local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Runtime(device, rank, local_rank, world_size)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks (torchrun sets RANK and WORLD_SIZE for each)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_runtime() -> Runtime:
    """One process on its own, with no process group: on the local rank's GPU under torchrun. For work that
    rank 0 does alone (evaluation and export after training), where a new process group would wait for ranks
    that have already finished."""
    return Runtime(_local_device())


def _local_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype (None = fp32) and whether fp16 loss scaling is needed.

    ``auto``: bf16 on GPUs that have it (Ampere and newer), fp16 with a GradScaler on T4/V100; on CPU, bf16
    where the CPU computes it natively (AVX-512-BF16 or AMX: ResNet-50 trains about twice as fast as in fp32)
    and fp32 elsewhere, where bf16 is emulated (13x slower than fp32 on an AVX2-only AMD EPYC).
    """
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            _warn_emulated_bf16()
        return torch.bfloat16, False
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.precision fp16: fp16 autocast needs a CUDA GPU; use bf16 or fp32 on CPU")
        return torch.float16, True
    raise ConfigError(f"train.precision: unknown precision '{precision}'; choose auto, fp32, fp16 or bf16")


@functools.cache  # once per process: a command resolves its precision in several places
def _warn_emulated_bf16() -> None:
    warnings.warn(f"this CPU ({cpu_model()}) has no native bf16 (AVX-512-BF16 or AMX): bf16 autocast is emulated "
                  "and trains many times slower than fp32; use --precision fp32 or auto", stacklevel=3)


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """What ``resolve_precision`` chose, as the recipe spells it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp_dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def algorithm_choice(deterministic: bool):
    """cuDNN's autotuner on (the fastest kernels for each input shape, as FFCV's ImageNet example sets it), or,
    for ``train.deterministic``, torch's deterministic algorithms. cuBLAS is then deterministic only with
    CUBLAS_WORKSPACE_CONFIG set before its first call, and some kernels have no deterministic CUDA version
    (``adaptive_avg_pool2d``'s backward, in every ResNet's head): torch warns about those instead of failing,
    so a CUDA run replays up to them. The previous settings come back on exit."""
    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.benchmark, cudnn.deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.benchmark, cudnn.deterministic = previous[2], previous[3]


def any_rank(flags: torch.Tensor, runtime: Runtime, also: torch.Tensor | None = None):
    """Each of ``flags`` (a 1-D tensor of 0/1 on the device) true on every rank if it is true on any: one
    all-reduce and one host sync for all of them. Ranks then take the same decision at the same step, where a
    rank that stopped alone would leave the others hanging in their next all-reduce.

    ``also``: a 1-D tensor of this rank's to read back in the same sync; then returns (flags, its values)."""
    if runtime.distributed:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    values = torch.cat([flags, also.to(flags.dtype)]).tolist() if also is not None else flags.tolist()
    agreed = [bool(v) for v in values[:len(flags)]]
    return agreed if also is None else (agreed, values[len(flags):])


def mean_across_ranks(value: float, runtime: Runtime) -> float:
    if not runtime.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return float(t.item()) / runtime.world_size
