"""Compiled kernels: numba's nopython JIT, cached on disk where a cache can be written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def compiled(fn: F) -> F:
    """Decorator: `numba.njit(nogil=True, cache=True)` for a kernel module's function.

    Compilation is lazy (the first call, per argument types); the machine code is kept in
    numba's on-disk cache ($NUMBA_CACHE_DIR, else `__pycache__` beside the source, else the
    user's cache directory: numba's "Notes on caching") so later processes load it instead of
    compiling. Where no cache directory can be written (a read-only install without a writable
    home), numba refuses `cache=True` with RuntimeError; the kernel is then compiled in memory by
    each process instead. nogil lets other threads (the gRPC event loop) run while a kernel does.
    No fastmath: kernels keep IEEE float semantics, so their sums run in the order written.
    """
    import numba

    try:
        return numba.njit(nogil=True, cache=True)(fn)  # type: ignore[return-value]
    except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
        return numba.njit(nogil=True, cache=False)(fn)  # type: ignore[return-value]


__all__ = ["compiled"]
