"""dws_gym.cpu_allocator: freed memory is kept for reuse (no page faults on reallocation), opt-outs are honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dws_gym.cpu_allocator import OPT_OUT_VARIABLE, _glibc_version, _reason_to_leave_alone, keep_freed_memory, outcome

GLIBC = _glibc_version() is not None


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


# Two 40 MiB buffers alive at once, freed together, 20 times: above the 32 MiB up to which glibc's defaults move their
# mmap threshold, so under the defaults every round maps fresh pages and faults them in again (smaller blocks fault
# too, as the step's do, but how often depends on the heap's layout).
_CHILD = """
import json, resource, sys, torch
from dws_gym.cpu_allocator import keep_freed_memory
outcome = keep_freed_memory() if sys.argv[1] == "keep" else None
def rounds(k):
    for _ in range(k):
        bufs = [torch.empty(10 * 1024**2) for _ in range(2)]
        for b in bufs:
            b.fill_(1.0)
        del bufs
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "outcome": outcome}))
"""


def _child(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in (OPT_OUT_VARIABLE, "GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], env={**environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc malloc's")
def test_kept_memory_is_reused_without_page_faults_and_the_opt_out_leaves_malloc_alone():
    plain = _child("plain")
    kept = _child("keep")
    opted_out = _child("keep", **{OPT_OUT_VARIABLE: "default"})
    assert kept["outcome"].startswith("malloc keeps freed memory"), kept
    assert opted_out["outcome"] == f"malloc left as it is ({OPT_OUT_VARIABLE}=default)"
    if _huge_pages_always() or "mmap threshold 256 MiB" not in kept["outcome"]:
        pytest.skip("page faults count 2 MiB pages here, or this glibc caps the mmap threshold below the test's 40 MiB "
                    f"buffers ({kept['outcome']})")
    # 20 rounds of 80 MiB are 409,600 pages of 4 KiB: glibc's defaults fault them in again, kept memory does not.
    assert plain["faults"] > 100_000 and opted_out["faults"] > 100_000, (plain, opted_out)
    assert kept["faults"] < plain["faults"] / 20, (kept, plain)


def test_the_environment_can_keep_malloc_as_it_is():
    libc = "glibc 2.36"
    for value in ("default", "Default", "off", "0"):
        assert _reason_to_leave_alone({OPT_OUT_VARIABLE: value}, libc) == f"left as it is ({OPT_OUT_VARIABLE}={value})"
    own = "left as it is (malloc thresholds from the environment)"
    assert _reason_to_leave_alone({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, libc) == own
    assert _reason_to_leave_alone({"MALLOC_MMAP_THRESHOLD_": "65536"}, libc) == own
    assert _reason_to_leave_alone({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, libc) == \
        "left as it is (jemalloc preloaded)"
    assert _reason_to_leave_alone({}, None).startswith("left as it is (the C library is not glibc")
    # Settings that do not name the thresholds do not stop it; a value it does not know is said, then ignored.
    assert _reason_to_leave_alone({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.cpu.hwcaps=-AVX2"}, libc) is None
    with pytest.warns(UserWarning, match=f"{OPT_OUT_VARIABLE}='yes please' is not understood"):
        assert _reason_to_leave_alone({OPT_OUT_VARIABLE: "yes please"}, libc) is None


def test_the_first_call_decides_and_later_calls_repeat_it():
    first = keep_freed_memory()
    assert keep_freed_memory() == first == outcome()
    assert first.startswith("malloc ")
