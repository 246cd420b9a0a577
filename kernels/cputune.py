"""Process settings that make batched SGLD steps on a CPU cheaper, measured on the
paper-shaped model (2-core CPU, 32 rows of a layer per step):

- Keep freed memory in the process. A step allocates and frees gigabytes of activations;
  glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` calls
  and unmaps them on free, so every step touches new pages: ≈ 10⁶ minor page faults and
  ≈ 1.6 s of kernel time per step, a quarter of it. Serving all blocks from the heap and
  trimming it only above a large threshold removes that cost; the process keeps its peak
  heap instead of returning it to the OS between steps.
- Flush denormal floats to zero. Once a model is trained, attention's backward produces
  values below 1.2·10⁻³⁸ that take the CPU's slow path: the flash-attention backward of
  layer-0 head steps of a briefly trained model took 41 ms per row instead of 15. Values
  that small are zero for every estimate here. The float mode is per thread and OpenMP
  workers keep the mode they started with, so the OpenMP runtime is paused once
  (``omp_pause_resource_all``) and its next parallel region starts fresh workers, which
  inherit the mode.

Both are process-wide and idempotent.
"""

from __future__ import annotations

import ctypes
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # <malloc.h>
_OMP_PAUSE_HARD = 2  # <omp.h>
_retained = False
_flushing = False


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """glibc: allocate every block from the heap (``M_MMAP_MAX = 0``) and give freed heap
    back to the OS only when more than ``trim_threshold`` bytes are free at its top.
    Returns whether the setting is in effect (False off glibc)."""
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(
            _M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    except (OSError, AttributeError):
        return False
    _retained = bool(ok)
    return _retained


def flush_denormals() -> bool:
    """Treat denormal floats as zero on the CPU (``torch.set_flush_denormal``) in this
    thread and in torch's OpenMP workers; returns whether the CPU supports it."""
    global _flushing
    if _flushing:
        return True
    if not torch.set_flush_denormal(True):
        return False
    _restart_openmp_workers()
    _flushing = True
    return True


def _restart_openmp_workers() -> None:
    """Pause every loaded OpenMP runtime (hard: its worker threads end); the next parallel
    region starts new workers with the calling thread's float mode."""
    if not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/maps") as maps:  # the shared libraries this process loaded
            libs = {line.split()[-1] for line in maps if ".so" in line.rsplit("/", 1)[-1]}
    except OSError:
        return
    runtimes = ("libgomp", "libiomp", "libomp")
    for path in sorted(p for p in libs if p.rsplit("/", 1)[-1].startswith(runtimes)):
        try:
            pause = getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)
        except OSError:
            continue
        if pause is not None:
            pause(_OMP_PAUSE_HARD)


def tune_cpu() -> dict[str, bool]:
    """Both settings; returns which are in effect."""
    return {"retain_freed_memory": retain_freed_memory(), "flush_denormals": flush_denormals()}
