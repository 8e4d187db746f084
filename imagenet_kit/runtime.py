"""Where the code runs: the device, the torchrun process group and the agreements across its ranks, precision
(autocast, bf16 on CPUs), and cuDNN's algorithm choice. The environment record is ``environment.py``."""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import shutil
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from imagenet_kit.environment import cpu_has_native_bf16, cpu_model
from imagenet_kit.errors import ConfigError, KitError
from imagenet_kit.progress import console

FRESH_STORE_KEY = "imagenet-kit/worker-store-port"


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node: int = 0  # torchrun's GROUP_RANK: which machine of the job this process runs on
    nodes: int = 1  # torchrun's GROUP_WORLD_SIZE: how many machines take part

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
    enable_autotuner()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = _local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        store = _fresh_store(rank, world_size, timeout) if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" \
            else None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout, store=store,
                                rank=rank if store else -1, world_size=world_size if store else -1)
    return Runtime(device, rank, local_rank, world_size, int(os.environ.get("GROUP_RANK", "0")),
                   int(os.environ.get("GROUP_WORLD_SIZE", "1")))


def _fresh_store(rank: int, world_size: int, timeout: datetime.timedelta):
    """A key-value store of this start of the worker group alone, for the process group to meet in.

    torchrun's workers meet in its agent's store, which outlives a restart (``--max-restarts``): the restarted
    workers then read the addresses their dead predecessors left there, and gloo waits on them until its timeout
    (torch 2.14, one node or several). So rank 0 serves a new store on a free port and leaves its address in the
    agent's store; the other ranks take that address once a store answers there: an address left by a previous
    start refuses the connection, since the agent ends every worker before it starts new ones."""
    host, agent_port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(host, agent_port, world_size, is_master=False, timeout=timeout)
    if rank == 0:
        store = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(FRESH_STORE_KEY, f"{store.port}")
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port = int(agent.get(FRESH_STORE_KEY))
        try:
            return dist.TCPStore(host, port, world_size, is_master=False, timeout=datetime.timedelta(seconds=5))
        except (RuntimeError, dist.DistStoreError):  # a previous start's address: nothing listens there now
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks (torchrun sets RANK and WORLD_SIZE for each)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_runtime() -> Runtime:
    """One process on its own, with no process group: on the local rank's GPU under torchrun. For work that
    rank 0 does alone (evaluation and export after training), where a new process group would wait for ranks
    that have already finished."""
    enable_autotuner()
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
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError(f"train.precision bf16: this GPU ({torch.cuda.get_device_name(device)}) has no bf16 "
                              "(Turing or older, e.g. a T4); use fp16 (--precision fp16, or auto), or the GPU's "
                              "own profile (--gpu t4)")
        if device.type == "cpu" and not cpu_has_native_bf16():
            _warn_emulated_bf16()
        return torch.bfloat16, False
    if precision == "fp16":
        if device.type != "cuda":
            _warn_cpu_fp16()
        return torch.float16, True
    raise ConfigError(f"train.precision: unknown precision '{precision}'; choose auto, fp32, fp16 or bf16")


@functools.cache  # once per process: a command resolves its precision in several places
def _warn_emulated_bf16() -> None:
    warnings.warn(f"this CPU ({cpu_model()}) has no native bf16 (AVX-512-BF16 or AMX): bf16 autocast is emulated "
                  "and trains many times slower than fp32; use --precision fp32 or auto", stacklevel=3)


@functools.cache
def _warn_cpu_fp16() -> None:
    """fp16 on CPU runs (torch's CPU autocast, loss scaling by ``GradScaler("cpu")``), so a T4's path can be tried
    anywhere; but most CPUs have no fp16 kernels and emulate it (one ResNet step took 42 s against 0.4 s in bf16
    on a Xeon with AVX-512-FP16 and AMX-BF16)."""
    console.print(f"[yellow]note:[/] fp16 on CPU ({cpu_model()}): torch's CPU autocast with loss scaling, as on a "
                  "T4, but slow on most CPUs (often over 10x slower than bf16 or fp32); it is for checking the fp16 "
                  "path, not for training")


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """What ``resolve_precision`` chose, as the recipe spells it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp_dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def require_compiler(device: torch.device) -> None:
    """``train.compile`` builds C code at its first compiled kernel: on a GPU Triton's launcher (a C compiler and
    Python's headers), on a CPU inductor's C++ kernels (a C++ compiler and the headers). Refused here, before the
    run starts, when they are missing, instead of a compiler error at the first step."""
    compilers = ("gcc", "cc", "clang") if device.type == "cuda" else ("g++", "c++", "clang++")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    missing = [what for what, present in ((f"a C{'' if device.type == 'cuda' else '++'} compiler "
                                           f"({' or '.join(compilers)})", any(map(shutil.which, compilers))),
                                          (f"Python's headers ({headers})", headers.is_file())) if not present]
    if missing:
        raise ConfigError(f"train.compile true: torch.compile builds C code for the {device.type}, and this host has "
                          f"no {' and no '.join(missing)}. Install them (Debian/Ubuntu: apt-get install gcc g++ "
                          f"python3-dev, or python{sys.version_info.major}.{sys.version_info.minor}-dev), or train "
                          "without it (--no-compile)")


def enable_autotuner() -> None:
    """cuDNN's autotuner for every command that runs a model on a GPU (training, evaluation, the LR range test, the
    benches): it times the convolution kernels once per input shape and keeps the fastest, as FFCV's ImageNet
    example sets it. Without it, what a bench times is not what training runs. No effect on CPU."""
    torch.backends.cudnn.benchmark = True


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


def on_every_rank(check, runtime: Runtime):
    """``check()`` on every rank, and its KitError, if any rank raised one, on all of them: each rank of a job
    checks its own node's files (betons, checkpoints), and a rank that failed alone would leave the others
    waiting in their next collective until the process group's timeout (30 minutes), without a line printed.
    Returns what ``check`` returned."""
    failure, value = None, None
    try:
        value = check()
    except KitError as err:
        failure = err
    if runtime.distributed:
        gathered: list = [None] * runtime.world_size
        dist.all_gather_object(gathered, (runtime.node, None if failure is None else str(failure)))
        failed = [(rank, node, message) for rank, (node, message) in enumerate(gathered) if message is not None]
        if failure is None and failed:
            rank, node, message = failed[0]
            raise KitError(f"rank {rank} on node {node}: {message}")
        if len(failed) == runtime.world_size and len({message for _, _, message in failed}) == 1:
            failure.every_rank = True  # the same error everywhere: each node's first rank says it, once
    if failure is not None:
        raise failure
    return value
