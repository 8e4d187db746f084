"""How many cores a loader or a conversion may use here: ``data.workers`` (or ``-j``) against this host.

Recipes are written for the hosts they are sold for (the ``full`` recipe's 12 workers suit a 96-vCPU p4d), but
FFCV hands the count to numba's ``set_num_threads``, which refuses more threads than the process may use: a
12-worker recipe would end in a traceback on a 4-vCPU g4dn.xlarge. So a count above this process's share of the
cores is lowered to it, with one line the first time each kind of loader is built. Under torchrun the node's
cores are split evenly between its processes (LOCAL_WORLD_SIZE), so 0 ("all cores") means this process's share.
"""
from __future__ import annotations

import os

from imagenet_kit.progress import console

_announced: set[str] = set()


def host_cores() -> int:
    """The cores this process may run on (a container's or taskset's CPU set), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def local_processes() -> int:
    """Training processes on this node: torchrun's LOCAL_WORLD_SIZE, 1 outside torchrun."""
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def core_share(cores: int, processes: int) -> int:
    """Each of ``processes`` processes' share of ``cores``: at least one."""
    return max(cores // processes, 1)


def usable_workers(requested: int, kind: str, cores: int | None = None, processes: int | None = None) -> int:
    """``requested`` (0 = all of this process's share) lowered to the share; says so once per ``kind``."""
    cores = host_cores() if cores is None else cores
    processes = local_processes() if processes is None else processes
    share = core_share(cores, processes)
    if 0 < requested <= share:
        return requested
    if requested > share and kind not in _announced:
        _announced.add(kind)
        split = f" ({cores} cores split between {processes} processes on this node)" if processes > 1 else ""
        here = f"{share} cores for this process" if processes > 1 else f"{cores} cores here"
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            console.print(f"{kind}: data.workers {requested} > {here}: using {share}{split}")
    return share


def torch_threads() -> int:
    """torch's intra-op threads for this process: OMP_NUM_THREADS when it is set (torchrun sets 1 per process
    when it starts several), else this process's share of the cores, as many as a loader of ``data.workers 0``."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return core_share(host_cores(), local_processes())
