#!/usr/bin/env python3
"""What a discard smaller than 2 MiB frees on this host (run as root).

    python3 tests/host/thp_discard.py

Maps 256 MiB of private anonymous memory, with and without transparent huge pages
(madvise), touches it, discards 3/4 of every 2 MiB with MADV_DONTNEED in 128 KiB or 2 MiB
pieces (what QEMU does with a reported block), and prints how much the RSS fell and how much
stayed allocated in split huge pages (footprint_bench.split_huge_pages: /proc/self/pagemap and
/proc/kpageflags). With huge pages, 128 KiB discards lower the RSS and free nothing: the huge
page is split only when the host is short of memory. That is why `reporting.min_order`
defaults to 9 (2 MiB): a guest cannot tell the two kinds of host apart.
"""

import ctypes
import mmap
import os

from footprint_bench import MIB, split_huge_pages

SIZE = 256 * MIB


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def trial(huge, piece):
    area = mmap.mmap(-1, SIZE + 2 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    offset = (-base) % (2 * MIB)
    area.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    for byte in range(offset, offset + SIZE, 4096):
        area[byte] = 1
    before = rss()
    if piece < 2 * MIB:
        for block in range(offset, offset + SIZE, 2 * MIB):
            for start in range(block, block + 2 * MIB * 3 // 4, piece):
                area.madvise(mmap.MADV_DONTNEED, start, piece)
    else:
        for block in range(offset, offset + SIZE * 3 // 4, 2 * MIB):
            area.madvise(mmap.MADV_DONTNEED, block, 2 * MIB)
    fell = before - rss()
    hidden = split_huge_pages(os.getpid(), (base + offset, base + offset + SIZE))
    print(f"huge pages {'on ' if huge else 'off'}, discards of {piece // 1024:4} KiB: RSS fell "
          f"{fell / MIB:.0f} MiB; still allocated in split huge pages: "
          + ("unknown (not root)" if hidden is None else f"{hidden / MIB:.0f} MiB"))
    del base
    area.close()


if __name__ == "__main__":
    for huge in (True, False):
        for piece in (128 * 1024, 2 * MIB):
            trial(huge, piece)
