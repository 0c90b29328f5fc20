"""fsapp.engine.heap: the allocators' free memory given back to the OS."""
import subprocess
import sys
import textwrap


def test_freed_memory_held_in_the_heap_goes_back_to_the_os():
    """What a load leaves: glibc raised its mmap threshold after a large
    block was freed, so the next blocks of a few hundred KB came from the
    heap, and freeing every other one left holes it does not trim (only its
    top). release_free_memory gives their pages back. (A fresh process:
    the threshold and the heap are the process's own.)"""
    code = textwrap.dedent("""
        import numpy as np
        from fsapp.engine.heap import release_free_memory, rss_bytes
        big = np.ones(16 << 20, dtype=np.uint8); del big      # mmap threshold -> 16 MB
        blocks = [np.ones(400_000, dtype=np.uint8) for _ in range(600)]   # ~240 MB from the heap
        keep = blocks[1::2]
        del blocks                                           # every other one freed: holes
        before = rss_bytes()
        given = release_free_memory()
        print(before, given, before - rss_bytes(), len(keep))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, given, dropped = int(out[0]), int(out[1]), int(out[2])
    assert dropped >= 80 << 20, out   # ~120 MB of holes
    # (what it reports is its own before/after; a page or two may move between the two readings)
    assert abs(given - dropped) <= 1 << 20, out
