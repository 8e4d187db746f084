"""Images in, betons out, batches back: sources, conversion, verification and FFCV's loaders.

Importing FFCV compiles numba's typed dictionary (``ffcv.fields.rgb_image`` fills one at import): 3-4 s of CPU in
every process that reads or writes a beton, the same code every time. Numba keeps compiled code in its on-disk
cache only for functions marked ``cache=True``, which its own typed-dictionary functions are not, so the kit marks
them before any module of this package imports FFCV. The cache holds numba's code, not the kit's or a run's: it
lives beside numba (or in ~/.cache/numba, NUMBA_CACHE_DIR) and numba renews it when numba changes.
"""
from __future__ import annotations


def _cache_numbas_typed_dict() -> None:
    from numba.core.registry import CPUDispatcher
    from numba.typed import typeddict

    for function in vars(typeddict).values():
        if isinstance(function, CPUDispatcher):
            try:
                function.enable_caching()
            except RuntimeError:  # nowhere writable to keep it: compiled in each process, as before
                return


_cache_numbas_typed_dict()
