"""What the machine can do fast: bf16 detection and the precision a run uses.

bf16 is only worth it where the hardware has native bf16 matrix units: on these project's Intel Xeons with AMX, bf16
matmuls at the world model's shapes ran 5.7-16x faster than fp32, while on CPUs without AMX / AVX512-BF16 (e.g. AMD
EPYC before Zen 4) PyTorch emulates bf16 and it is slower than fp32. So ``dtype="auto"`` means bf16 exactly where the
hardware has it, fp32 elsewhere, and every run says which it chose and why (:attr:`Precision.reason`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["Precision", "cpu_bf16_flags", "cpu_model", "describe_machine", "proc_status_bytes", "resolve_precision"]

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_DTYPES = ("auto", "bf16", "fp32")
_TORCH_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32"}


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's description where that file does not exist."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 CPU features present (``amx_bf16``, ``avx512_bf16``), read from ``/proc/cpuinfo``."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in _BF16_FLAGS if f in flags]


@dataclass(frozen=True)
class Precision:
    """The precision a run uses and why.

    Attributes:
        dtype: ``torch.bfloat16`` or ``torch.float32``.
        reason: One line for logs and model cards, e.g. ``"bf16: CPU has amx_bf16 (Intel Xeon ...)"``.
    """

    dtype: torch.dtype
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == torch.bfloat16

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self, device: torch.device | str) -> torch.autocast:
        """An autocast context for ``device`` that is active only for bf16."""
        device_type = torch.device(device).type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16)


def resolve_precision(
    dtype: str | torch.dtype, device: torch.device | str, *, cpuinfo: str | None = None
) -> Precision:
    """Decide the precision for ``dtype`` in ``("auto", "bf16", "fp32")`` on ``device``.

    ``"auto"`` picks bf16 on a CUDA device that supports it and on a CPU with ``amx_bf16`` or ``avx512_bf16``,
    fp32 otherwise. ``"bf16"`` is honoured everywhere (slow where emulated; the reason says so).

    Args:
        dtype: The requested precision (``torch.bfloat16`` / ``torch.float32`` stand for ``"bf16"`` / ``"fp32"``).
        device: Where the model runs.
        cpuinfo: Text of ``/proc/cpuinfo`` to read instead of the machine's (tests).

    Raises:
        ValueError: any other ``dtype``.
    """
    if isinstance(dtype, torch.dtype) and dtype in _TORCH_DTYPES:
        dtype = _TORCH_DTYPES[dtype]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(
            f"dtype must be 'auto', 'bf16' or 'fp32' (or torch.bfloat16 / torch.float32), got {dtype!r}"
        )
    device = torch.device(device)
    if device.type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        where = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "CUDA device"
        why = f"{where} {'supports' if fast else 'lacks'} bf16"
    else:
        flags = cpu_bf16_flags(cpuinfo)
        fast = bool(flags)
        model = cpu_model() if cpuinfo is None else "given CPU"
        why = f"CPU has {', '.join(flags)} ({model})" if fast else f"CPU has no amx_bf16 / avx512_bf16 ({model})"
    if dtype == "fp32":
        return Precision(torch.float32, f"fp32: asked for ({why})")
    if dtype == "bf16":
        return Precision(torch.bfloat16, f"bf16: asked for ({why}{'' if fast else '; emulated, likely slower'})")
    return Precision(torch.bfloat16, f"bf16: {why}") if fast else Precision(torch.float32, f"fp32: {why}")


def describe_machine() -> str:
    """CPU model, cores, native bf16 flags, RAM, GPU (if visible) and torch version, in one line (benchmark reports)."""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GiB RAM"
    except (ValueError, OSError):
        mem = ""
    flags = cpu_bf16_flags()
    bf16 = f" ({', '.join(flags)})" if flags else " (no native bf16)"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu_model()}{bf16}, {os.cpu_count()} cores{mem}{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} CPU threads), {platform.system()} {platform.release()}")


def proc_status_bytes(key: str) -> int:
    """A ``kB`` field of Linux ``/proc/self/status`` (e.g. ``VmHWM``, ``RssAnon``), in bytes.

    Raises:
        OSError: no ``/proc`` (not Linux).
        KeyError: the field is absent.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)
