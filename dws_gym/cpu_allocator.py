"""Keep freed memory in the process, so that a CPU step's buffers do not page-fault on every call.

A dream step on a CPU allocates its intermediate buffers afresh on every call: eager operators do, and so does the
code ``torch.compile`` generates, which frees its buffers when the call returns. glibc's malloc serves a block above
its mmap threshold (128 KiB at start, raised as large blocks are freed, up to 32 MiB) with newly mapped pages and
unmaps it on free, and it returns free memory at the top of its heap to the system above a trim threshold. Either
way the next call's buffers are new pages, and the kernel faults in and zeroes every 4 KiB page on its first touch.
The Breakout default's top-level activations at 64 envs are 12 MiB each: on two AMX Xeon cores a compiled bf16 dream
env step took 41.6 ms with glibc's defaults, about 7,000 page faults a step, and 33.9 ms with both thresholds raised,
none (peak resident memory 516 against 527 MiB; ``bench/cpu_allocator.py``, figures in ``bench/RESULTS.md``).

:func:`keep_freed_memory` raises both thresholds with ``mallopt`` (``M_MMAP_THRESHOLD`` to 256 MiB, or to 32 MiB
where an older glibc caps it there, ``M_TRIM_THRESHOLD`` to 1 GiB), so blocks up to that size come from the heap and
freed memory stays there for the next call. The cost is resident memory: freed memory is kept rather than returned to
the system (up to the trim threshold at the top of each malloc arena), which also holds for the rest of the program's
allocations once it is set. Settings are process-wide and one-way; :class:`~dws_gym.envs.dream.DreamVectorEnv`
applies them when it steps on a CPU (``keep_freed_memory=False`` there skips it). Malloc is left as it is with
``DWS_GYM_MALLOC=default`` (or ``off``, ``0``, ``false``) in the environment, with one's own thresholds
(``GLIBC_TUNABLES`` naming ``glibc.malloc.mmap_threshold`` or ``glibc.malloc.trim_threshold``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), with another allocator in ``LD_PRELOAD`` (jemalloc,
tcmalloc, mimalloc) and on any C library but glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
import warnings

__all__ = ["MMAP_THRESHOLD", "OPT_OUT_VARIABLE", "TRIM_THRESHOLD", "keep_freed_memory", "outcome"]

MMAP_THRESHOLD = 256 * 1024**2
"""Blocks up to this size come from malloc's heap (reused) instead of fresh mappings."""
TRIM_THRESHOLD = 1024**3
"""Free memory at the top of the heap kept for reuse before malloc returns it to the system."""
OPT_OUT_VARIABLE = "DWS_GYM_MALLOC"
"""Set to ``default`` to leave malloc's settings alone."""

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_OPT_OUT_VALUES = ("default", "off", "0", "false", "no")
_OWN_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

_lock = threading.Lock()
_outcome: str | None = None


def _glibc_version() -> str | None:
    """``"glibc 2.36"`` from the C library itself, or ``None`` where it is another one."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or a libc without the name
        return None
    return version if version and version.startswith("glibc") else None


def _reason_to_leave_alone(environ: os._Environ[str] | dict[str, str], libc: str | None) -> str | None:
    """Why malloc should stay as it is, or ``None`` to set it (``libc``: :func:`_glibc_version`)."""
    value = environ.get(OPT_OUT_VARIABLE, "").strip()
    if value.lower() in _OPT_OUT_VALUES:
        return f"left as it is ({OPT_OUT_VARIABLE}={value})"
    if value:
        warnings.warn(f"{OPT_OUT_VARIABLE}={value!r} is not understood: set it to 'default' to leave malloc as it "
                      "is; keeping freed memory", stacklevel=4)  # the caller of keep_freed_memory
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(name in tunables for name in _OWN_TUNABLES) or any(
            environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return "left as it is (malloc thresholds from the environment)"
    preload = environ.get("LD_PRELOAD", "")
    other = next((name for name in _OTHER_ALLOCATORS if name in preload), None)
    if other:
        return f"left as it is ({other} preloaded)"
    if libc is None:
        return f"left as it is (the C library is not glibc: {sys.platform} {platform.libc_ver()[0]})".rstrip()
    return None


def keep_freed_memory() -> str:
    """Raise glibc malloc's mmap and trim thresholds for this process (module docstring), once.

    Safe to call any number of times and from several threads: the first call decides, later calls return its
    outcome.

    Returns:
        One line for logs and env metadata: what was set, or why malloc was left as it is.
    """
    global _outcome
    with _lock:
        if _outcome is None:
            _outcome = _apply()
        return _outcome


def outcome() -> str | None:
    """What :func:`keep_freed_memory` did in this process, or ``None`` if it has not been called."""
    with _lock:
        return _outcome


def _apply() -> str:
    reason = _reason_to_leave_alone(os.environ, _glibc_version())
    if reason is not None:
        return f"malloc {reason}"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as e:  # a glibc without the usual soname
        return f"malloc left as it is (no mallopt: {e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap = MMAP_THRESHOLD
    if not mallopt(_M_MMAP_THRESHOLD, mmap):
        # glibc releases that cap the threshold at half their largest heap (32 MiB on 64-bit systems).
        mmap = 32 * 1024**2
        if not mallopt(_M_MMAP_THRESHOLD, mmap):
            return "malloc left as it is (mallopt refused the mmap threshold)"
    if not mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return f"malloc mmap threshold {mmap // 1024**2} MiB (mallopt refused the trim threshold)"
    return (f"malloc keeps freed memory (glibc mmap threshold {mmap // 1024**2} MiB, trim threshold "
            f"{TRIM_THRESHOLD // 1024**3} GiB; {OPT_OUT_VARIABLE}=default leaves malloc alone)")
