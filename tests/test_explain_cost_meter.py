"""CostMeter's peak memory on Linux: the process's own resettable high-water mark, also in forked children.

The meter keeps /proc/self/status and /proc/self/clear_refs open between calls. /proc/self resolves when a file
is opened, so a forked child (a sweep worker) holding the parent's descriptors would read, and reset, the
parent's mark: these tests fail if the descriptors are not reopened per process.
"""

from __future__ import annotations

import os
import sys

import pytest

from xaudit.explain import CostMeter
from xaudit.explain._cost import _can_reset_peak, _hwm_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                                reason="needs Linux's resettable VmHWM")

MiB = 1024**2
# Blocks above glibc's largest mmap threshold (32 MiB) are always fresh mappings: a smaller one may reuse heap
# pages that earlier tests left resident, and add no RSS at all.


def _touch(n_bytes: int) -> bytearray:
    block = bytearray(n_bytes)
    for i in range(0, n_bytes, 4096):
        block[i] = 1
    return block


def test_the_meter_sees_its_own_peak_not_an_earlier_one() -> None:
    _touch(160 * MiB)  # an earlier peak, freed again
    with CostMeter(1) as meter:
        block = _touch(48 * MiB)
    del block
    assert meter.cost is not None
    assert 44 * MiB <= meter.cost.peak_rss_bytes < 100 * MiB


def test_a_forked_child_measures_and_resets_its_own_mark() -> None:
    with CostMeter(1):  # the parent has opened its descriptors before forking
        pass
    _touch(128 * MiB)  # a peak of the parent, freed again
    parent_mark = _hwm_bytes()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its measured peak, never return into pytest
        code = 1
        try:
            os.close(read)
            with CostMeter(1) as meter:
                block = _touch(48 * MiB)
            del block
            assert meter.cost is not None
            os.write(write, str(meter.cost.peak_rss_bytes).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        reported = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert 44 * MiB <= int(reported) < 100 * MiB  # the child's own allocation, read from its own status
    assert _hwm_bytes() >= parent_mark  # the child's reset did not lower the parent's mark
