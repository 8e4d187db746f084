"""Open a folder of shared libraries by path, dependencies first. Standard library only: the GPU-bundle test
runs this file under a Python that has nothing of the kit installed."""
from __future__ import annotations

import ctypes
from pathlib import Path


def load_libraries(folder: Path) -> list[Path]:
    """``ctypes.CDLL`` every file of ``folder`` with RTLD_GLOBAL, retrying those whose dependencies were not
    loaded yet (the dynamic linker matches a library's needs against what is loaded by name), so nothing
    depends on LD_LIBRARY_PATH, which a running process cannot change. Returns them in load order; raises
    OSError naming those that cannot load on this host."""
    pending, loaded = sorted(Path(folder).iterdir()), []
    while pending:
        failed = []
        for library in pending:
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
                loaded.append(library)
            except OSError:
                failed.append(library)
        if len(failed) == len(pending):
            raise OSError(f"cannot load {', '.join(p.name for p in failed)} on this host")
        pending = failed
    return loaded
