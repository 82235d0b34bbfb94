"""``keep_freed_memory``: on Linux with glibc, the C allocator keeps the memory a training step frees, so
the next step reuses those pages instead of asking the kernel for fresh ones.

Why: every step allocates and frees the same activations and gradients, and by default glibc gives
memory back to the kernel as soon as the top of its heap has 128 KiB free, and serves every block of
128 KiB or more (most tensors) with its own ``mmap``, unmapped again on ``free``. Each fresh 4 KiB page
is then a page fault, zero-filled by the kernel: at the ``ablation_base`` size 1,300-1,700 faults and
3.4-4.5 ms of kernel time a step (6-8% of its CPU time); with this, 3-8 faults and 0.3-0.4 ms. In
``benchmarks.bench_train`` the plain PyTorch loop ran 1.005-1.037x as fast with it (wall clock).

What it costs: memory a step has used stays with the process (its resident size is its peak, as it is
for any run with a caching allocator, like PyTorch's on a GPU); blocks over 32 MiB (glibc's largest
threshold) still get their own ``mmap``. ``keep_freed_memory=false`` in the training config leaves
the allocator as it is. Elsewhere (macOS, Windows, musl) there is nothing to do.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (<malloc.h>)
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap before any goes back to the kernel
MMAP_THRESHOLD = 32 << 20  # glibc's largest: 4 MiB * sizeof(long) on 64-bit (a larger value is refused)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - present in every glibc; looked up here so a stripped one is caught
        return libc
    except (ValueError, OSError, AttributeError):  # no such confstr name (musl), or no libc to load
        return None


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds (module docstring) for this process; True if it applied."""
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(trim and mmap)
