"""CostMeter's peak memory on Linux: the process's own resettable high-water mark, also in forked children.

The meter keeps /proc/self/status and /proc/self/clear_refs open between calls. /proc/self resolves when a file
is opened, so a forked child (a sweep worker) holding the parent's descriptors would read, and reset, the
parent's mark: the fork check fails if the descriptors are not reopened per process.

Both checks run in a fresh interpreter: in a long test session, a large block may be served from pages an
earlier test left resident, and then it adds no RSS at all (a CI run measured 0 bytes for 48 MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xaudit.explain._cost import _can_reset_peak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                                reason="needs Linux's resettable VmHWM")

MiB = 1024**2

_MEASURE = """
import json, os
from xaudit.explain import CostMeter
from xaudit.explain._cost import _hwm_bytes

MiB = 1024**2

def touch(n):
    block = bytearray(n)
    for i in range(0, n, 4096):
        block[i] = 1
    return block

out = {}
touch(160 * MiB)  # an earlier peak, freed again
with CostMeter(1) as meter:
    block = touch(48 * MiB)
del block
out["own"] = meter.cost.peak_rss_bytes

touch(128 * MiB)  # a peak of the parent, freed again
parent_mark = _hwm_bytes()
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # child: report its measured peak, never return
    code = 1
    try:
        os.close(read)
        with CostMeter(1) as child:
            block = touch(48 * MiB)
        del block
        os.write(write, str(child.cost.peak_rss_bytes).encode())
        code = 0
    finally:
        os._exit(code)
os.close(write)
with os.fdopen(read) as fh:
    out["child"] = int(fh.read())
_, status = os.waitpid(pid, 0)
out["child_exit"] = os.WEXITSTATUS(status)
out["parent_mark_kept"] = _hwm_bytes() >= parent_mark
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", _MEASURE], check=True, capture_output=True, text=True, timeout=120)
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_meter_sees_its_own_peak_not_an_earlier_one(measured: dict[str, int]) -> None:
    assert 44 * MiB <= measured["own"] < 100 * MiB


def test_a_forked_child_measures_and_resets_its_own_mark(measured: dict[str, int]) -> None:
    assert measured["child_exit"] == 0
    assert 44 * MiB <= measured["child"] < 100 * MiB  # the child's own allocation, read from its own status
    assert measured["parent_mark_kept"]  # the child's reset did not lower the parent's mark


_AFTER_OTHER_WORK = """
import json, sys, torch, warnings
warnings.filterwarnings("ignore")
from xaudit.explain import get_explainer
from xaudit.models import build_model
torch.set_num_threads(1)
model = build_model("cnn", (1, 32, 32), 10, hidden=16, seed=0).eval()
x = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0))
explainer = get_explainer("deeplift")(model)
explainer.explain(x[:2], 0, memory_budget="8MiB")  # first-call allocations
first = explainer.explain(x, 0, memory_budget="8MiB", fresh_heap=True).cost.peak_rss_bytes
get_explainer("saliency")(model).explain(torch.rand(400, 1, 32, 32), 0, memory_budget="256MiB")  # bigger, freed
again = explainer.explain(x, 0, memory_budget="8MiB", fresh_heap=True).cost.peak_rss_bytes
print(json.dumps({"first": first, "again": again}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="needs Linux's resettable VmHWM")
def test_a_fresh_heap_measures_the_calls_own_peak_after_other_work() -> None:
    # without it, a call after a bigger one reused the freed pages unseen: deeplift read 0.0 MiB for 12.8
    out = subprocess.run([sys.executable, "-c", _AFTER_OTHER_WORK], check=True, capture_output=True, text=True,
                         timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["first"] > 2 * 2**20, r  # the call works in several MiB of its own
    assert r["again"] == pytest.approx(r["first"], rel=0.3), r
