"""Where the code runs: device, torchrun process group, precision, and the run's environment record."""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from imagenet_kit.config import ConfigError


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a user would retype it: `imagenet-kit run ...`, or
    `python -m imagenet_kit run ...` (torchrun's form), whose argv[0] is the package's __main__.py."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0])
    name = "python -m imagenet_kit" if program.name == "__main__.py" else program.name
    return " ".join([name, *argv[1:]])


def cpu_has_native_bf16() -> bool:
    # torch has no public check; these are torch.cpu's own cpuinfo probes.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_model() -> str:
    """The CPU's name and the vector instructions torch uses on it, e.g. "AMD EPYC (AVX2)": cloud hosts give
    different CPU generations one name, and their training speeds differ several times over."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{name} ({isa}{' + BF16' if cpu_has_native_bf16() else ''})"


def git_revision() -> str:
    """HEAD (+ "-dirty"); a copy of the tree without .git (a GPU host's) names it in IMAGENET_KIT_GIT."""
    if os.environ.get("IMAGENET_KIT_GIT"):
        return os.environ["IMAGENET_KIT_GIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def environment(runtime: Runtime | None = None) -> dict:
    """Versions, hardware and code revision: what env.json and every bench result record."""
    import numpy
    import torchvision

    device = runtime.device if runtime else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ffcv": _package_version("ffcv"),  # ffcv.__version__ says 0.0.3rc1 in the 1.0.2 release
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cuda_driver": cuda_driver(),
        "device": device_name(device),
        "gpu_count": torch.cuda.device_count(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "world_size": runtime.world_size if runtime else 1,
        "git": git_revision(),
        "command": command_line(),
    }


def cuda_driver() -> str | None:
    """The NVIDIA kernel driver's version (e.g. 550.54.15), None without one."""
    with contextlib.suppress(OSError):
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        words = [w for w in first.split() if w[:1].isdigit() and "." in w]
        return words[0] if words else first.strip()
    return None


def _package_version(name: str) -> str | None:
    """An installed package's version; None where it is absent (the GPU evidence runs without FFCV)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


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


def write_json(path: Path, data) -> None:
    """Write atomically: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


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
