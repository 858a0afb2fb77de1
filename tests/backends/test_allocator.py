"""Training keeps freed host memory for reuse (glibc mallopt) unless told not to; importing
xpnn or building a backend or a model changes nothing process-wide."""

import os
import platform
import subprocess
import sys

import pytest

from xpnn.backends import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Four 8 MB arrays per step, freed together: with glibc's defaults the 32 MB freed at the
# top of the heap exceed its trim threshold and go back to the kernel, so every step
# page-faults them in again (2,048 faults); kept for reuse, later steps fault none.
FAULTS_PER_STEP = """
import resource
import numpy as np
from xpnn import backends
backends.allocator.keep_freed_memory()  # what fit and the benchmarks call when they start
def step():
    arrays = [np.ones(1 << 21, dtype=np.float32) for _ in range(4)]
    del arrays
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
print(backends.allocator.status())
"""


def run(script=FAULTS_PER_STEP, **environment):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "XPNN_MALLOC_TUNING")}
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    return float(out[0]), out[1]


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_freed_memory_is_reused_instead_of_page_faulted_again():
    kept_faults, kept_status = run()
    default_faults, default_status = run(XPNN_MALLOC_TUNING="0")
    assert "keeps freed memory" in kept_status and "XPNN_MALLOC_TUNING=0" in kept_status
    assert default_status == "left at the C library's defaults (XPNN_MALLOC_TUNING=0)"
    # glibc's defaults hand the 32 MB back and fault it in again every step (2,048 faults
    # with 4 KiB pages, at least 16 with 2 MiB transparent huge pages); kept, none.
    assert kept_faults < 8 < default_faults, (kept_faults, default_faults)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_the_users_own_malloc_settings_win():
    _, status = run(MALLOC_TRIM_THRESHOLD_="1000")
    assert status == "left as the environment sets it (MALLOC_TRIM_THRESHOLD_)"
    _, status = run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000")
    assert status == "left as the environment sets it (GLIBC_TUNABLES)"


BUILD_ONLY = """
import numpy as np
from xpnn import backends
from xpnn.layers import Dense, Sequential
backends.current()
model = Sequential([Dense(4, 2)], seed=0)
model(np.ones((3, 4), dtype="float32"))
print(0)
print(backends.allocator.status())
"""

FIT = """
import numpy as np
import xpnn
from xpnn.layers import Dense, Sequential
model = Sequential([Dense(4, 2)], seed=0)
x, y = np.ones((8, 4), dtype="float32"), np.zeros(8, dtype=np.int64)
xpnn.fit(model, (x, y), optimizer=xpnn.optim.SGD(model.parameters(), lr=0.1), epochs=1,
         batch_size=4, verbose=False, progress=False)
print(0)
print(xpnn.backends.allocator.status())
"""


def test_building_a_backend_or_a_model_changes_no_process_setting():
    _, status = run(BUILD_ONLY)
    assert status == "not applied yet"


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_training_applies_the_setting():
    _, status = run(FIT)
    assert "keeps freed memory" in status


def test_status_is_one_line():
    allocator.keep_freed_memory()
    assert allocator.status() != "not applied yet"
    assert "\n" not in allocator.status()
