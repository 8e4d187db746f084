"""A fix for FFCV 1.0.2's page-cache reader, applied on import (``loaders`` imports this module).

``OSCacheManager.state_type`` does ``t1 = numba.uint8[::1]; t1.mutable = False``. Numba interns its
types, so that line flips the one process-wide "writable 1-D uint8 array" type to read-only in place and
changes its hash. Every dict keyed by a signature that held it (each compiled function's ``overloads``)
is then corrupt: when a Loader is garbage-collected, numba's dispatcher finalizer iterates those
overloads and prints ``Exception ignored in: <finalize object ...> ... KeyError: (Array(uint8, 1, 'C',
True, ...), ...)`` (libffcv/ffcv#167), and later writable arrays miss their compiled code and recompile.
The replacement compiles the same reader against a fresh read-only type and mutates nothing.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ffcv.memory_managers.os_cache import OSCacheManager
from ffcv.pipeline.compiler import Compiler

_PAGE_CACHE = nb.types.Array(nb.uint8, 1, "C", readonly=True)  # the beton, memory-mapped read-only
_INDEX = nb.uint64[::1]


def _compile_reader(self):
    # FFCV's reader, unchanged: the bytes of the sample stored at ``address``.
    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    state = nb.types.Tuple([_PAGE_CACHE, _INDEX, _INDEX])
    return Compiler.compile(read, _PAGE_CACHE(nb.uint64, state))


OSCacheManager.compile_reader = _compile_reader
