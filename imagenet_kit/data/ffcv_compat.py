"""Fixes to FFCV 1.0.2, applied on import (``loaders`` imports this module): its page-cache reader (below), one
compile per pipeline function (``_compile_once``) and torch's thread count (``_loader_threads_are_numbas_only``).

The reader: ``OSCacheManager.state_type`` does ``t1 = numba.uint8[::1]; t1.mutable = False``. Numba interns its
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
import torch
from ffcv.memory_managers.os_cache import OSCacheManager
from ffcv.pipeline.compiler import Compiler

from imagenet_kit.data.workers import torch_threads

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


def _compile_once():
    """FFCV compiles a Loader's pipeline functions with numba anew for every Loader, though the kit makes the same
    ones several times in a run (the LR range test's loader and the training loader; an evaluation after
    training); each costs seconds of a single core. A function is compiled once per process here: the same code
    with the same closure values (the kit's crop, size, mean...), signature and threading reuse it."""
    compile_anew, compiled = Compiler.compile.__func__, {}

    def closure_key(value):
        try:
            return ("value", type(value), value, hash(value))
        except TypeError:  # an array, say: this very object (kept alive beside the function, so its id stays)
            return ("object", id(value))

    def compile_once(cls, code, signature=None):
        if not cls.is_enabled or getattr(code, "__code__", None) is None:
            return compile_anew(cls, code, signature)
        cells = [cell.cell_contents for cell in code.__closure__ or ()]
        key = (code.__code__, tuple(map(closure_key, cells)), signature, getattr(code, "is_parallel", False),
               cls.num_threads > 1)
        try:
            if key not in compiled:
                compiled[key] = (compile_anew(cls, code, signature), cells)
        except TypeError:  # an unhashable signature
            return compile_anew(cls, code, signature)
        return compiled[key][0]

    Compiler.compile = classmethod(compile_once)


_compile_once()


def _loader_threads_are_numbas_only():
    """FFCV's ``Compiler.set_num_threads(n)`` sets numba's threads and torch's alike: torch's to 1 when FFCV is
    imported, then to the loader's worker count for each loader and each epoch (from the loader's own thread).
    torch's threads compute the training step, and the count is the process's to choose: torchrun's
    OMP_NUM_THREADS=1 for several processes on a node was undone at each epoch, and two test-size runs at once on
    2 cores, with 2 torch threads each, took 5x as long as with one each. Here the loader sets numba's threads,
    which decode its images, and torch keeps ``workers.torch_threads()`` (tests/test_workers.py)."""
    def set_num_threads(cls, n):
        cls.num_threads = n if n >= 1 else nb.config.NUMBA_NUM_THREADS  # FFCV's 0: every core
        nb.set_num_threads(cls.num_threads)

    Compiler.set_num_threads = classmethod(set_num_threads)
    torch.set_num_threads(torch_threads())


_loader_threads_are_numbas_only()
