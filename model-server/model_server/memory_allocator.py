"""glibc's malloc told to keep freed memory, so forward passes stop page-faulting it back.

A CPU forward pass allocates its activations (MBs each) anew and frees them at the end. With
glibc's defaults, blocks past the dynamic mmap threshold are unmapped when freed, and a heap
whose free top exceeds the trim threshold is shrunk: the next pass faults every page back in,
zeroed by the kernel. Measured on the embedding server (100 texts a pass, 2 cores): ~50,000
minor page faults a pass (~200 MB) with the defaults, under 500 with the thresholds below, and
its CPU per text fell to that of the same encode in a plain script. The memory kept is what the
largest forward pass needs, which the warm-up (largest shapes first) reaches anyway.

glibc's dynamic adjustment (below) does sometimes land on reusing: the same forward passes of a
test faulted ~300,000 times in most runs and 3 times in others, as the heap's layout fell. The
thresholds make reuse the rule, not the luck of one process's layout.

The thresholds are glibc's `mallopt` parameters (man 3 mallopt): M_MMAP_THRESHOLD at its
largest, 32 MiB on 64-bit systems (HEAP_MAX_SIZE / 2), and M_TRIM_THRESHOLD off. Setting either
also turns off glibc's dynamic adjustment of both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_NEVER = 2**31 - 1  # an int: mallopt takes one; the largest trims nothing in practice


def keep_freed_memory() -> bool:
    """Apply the thresholds to this process's malloc; False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        logger.info("malloc is not glibc's: freed memory is left to its own policy")
        return False
    applied = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    applied = libc.mallopt(M_TRIM_THRESHOLD, TRIM_NEVER) == 1 and applied
    if not applied:
        raise RuntimeError(
            "glibc's mallopt refused the thresholds of MODEL_KEEP_FREED_MEMORY; "
            "set MODEL_KEEP_FREED_MEMORY=false"
        )
    return True
