"""The environment record: versions, hardware, code revision and command line, as env.json and every bench row
keep them, and ``write_json``, the atomic JSON write every record goes through."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
from pathlib import Path

import torch

from imagenet_kit.revision import git_revision


def write_json(path: Path, data) -> None:
    """Write atomically: readers never see half a file."""
    write_bytes(path, json.dumps(data, indent=1).encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Write atomically (a temporary file beside it, then a rename), making its folder if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def environment(device: torch.device | None = None, world_size: int = 1) -> dict:
    """Versions, hardware and code revision: what env.json and every bench result record. ``device``: the one the
    run uses (default: the first GPU, else the CPU); ``world_size``: its processes."""
    import numpy
    import torchvision

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    git = git_revision()
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
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "world_size": world_size,
        "git": git,
        "git_clean": not git.endswith(("-dirty", "unknown")),  # what ran is exactly that commit
        "command": command_line(),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


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


# The vector extensions that decide how fast a CPU trains in each precision, as /proc/cpuinfo names them.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS this CPU reports, read from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in SPEED_FLAGS if flag in present]
    return []


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a user would retype it: `imagenet-kit run ...`, or
    `python -m imagenet_kit run ...` (torchrun's form), whose argv[0] is the package's __main__.py."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0])
    name = "python -m imagenet_kit" if program.name == "__main__.py" else program.name
    return " ".join([name, *argv[1:]])


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
