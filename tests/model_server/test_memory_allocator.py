"""MODEL_KEEP_FREED_MEMORY: glibc's malloc keeps freed memory for the next forward pass.

Each check runs in a fresh interpreter, since the thresholds are process-wide. The first two
read glibc's own bookkeeping, which is deterministic: where a large block comes from (its chunk
header's IS_MMAPPED bit) and whether a freed heap is trimmed (`mallinfo2().arena`). Counting page
faults over a plain default run is not: glibc's dynamic thresholds adapt to the heap's history,
so the same passes, with the defaults, faulted 255,000-307,000 times in most runs here and 3
times in others (and on the CI machine), as the heap's layout fell.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from batchinfer_testing.model_server import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")

KEEP = """
import sys
from model_server.memory_allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
"""

# A 4 MiB block: past glibc's initial mmap threshold (128 KiB), under the kept one (32 MiB).
# glibc marks a chunk served by mmap with bit 0x2 of the size word before the pointer (malloc.c).
LARGE_BLOCK = (
    KEEP
    + """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
pointer = libc.malloc(4 * 1024 * 1024)
size_word = ctypes.c_size_t.from_address(pointer - ctypes.sizeof(ctypes.c_size_t)).value
print(int(bool(size_word & 0x2)))
"""
)

# 1,024 blocks of 96 KiB (heap blocks under any mmap threshold), freed: the heap's free top is
# 96 MiB, past the default trim threshold (128 KiB) and past the largest that glibc's dynamic
# adjustment can raise it to (64 MiB, twice the largest mmap threshold). Prints the main arena's
# size before and after.
FREED_HEAP = (
    KEEP
    + """
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
blocks = (ctypes.c_void_p * 1024)()  # allocated first: nothing of Python's lies between blocks
for index in range(1024):
    blocks[index] = libc.malloc(96 * 1024)
grown = libc.mallinfo2().arena
for index in reversed(range(1024)):
    libc.free(blocks[index])
print(grown, libc.mallinfo2().arena)
"""
)

# Forward passes of varying lengths through one transformer layer: prints the minor page faults
# of a first round (which must fault its memory in) and of the ten rounds after it.
PASSES = (
    KEEP
    + """
import resource
import torch
torch.set_num_threads(1)
layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True).eval()
lengths = (128, 16, 96, 8, 128, 32, 64)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.inference_mode():
    start = faults()
    for length in lengths:
        layer(torch.randn(32, length, 384))
    first = faults()
    for _ in range(10):
        for length in lengths:
            layer(torch.randn(32, length, 384))
print(first - start, faults() - first)
"""
)


def run(script: str, mode: str) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    return [int(value) for value in result.stdout.strip().splitlines()[-1].split()]


def test_a_large_block_comes_from_the_heap_once_kept() -> None:
    """Defaults: a 4 MiB block is mmapped, and unmapped again when freed; kept: heap memory."""
    assert run(LARGE_BLOCK, "default") == [1]
    assert run(LARGE_BLOCK, "keep") == [0]


def test_a_freed_heap_is_not_trimmed_once_kept() -> None:
    """Defaults: freeing 96 MiB at the heap's top hands it back to the kernel; kept: it stays."""
    grown, after = run(FREED_HEAP, "default")
    assert grown >= 96 * 1024 * 1024
    assert after < 64 * 1024 * 1024
    grown, after = run(FREED_HEAP, "keep")
    assert grown >= 96 * 1024 * 1024
    assert after == grown


def test_forward_passes_after_the_first_round_reuse_its_memory() -> None:
    """Kept: ten rounds after the first fault fewer pages than the first round alone (measured:
    ~28,000 for the first round, 3-4,600 for the ten after; with glibc's defaults the ten after
    faulted 3 or ~300,000 times, depending on the heap's layout)."""
    first, after = run(PASSES, "keep")
    assert after * 2 < first
