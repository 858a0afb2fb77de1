"""xpnn keeps freed host memory for reuse (glibc mallopt) unless told not to."""

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
backends.current()
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


def run(**environment):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "XPNN_MALLOC_TUNING")}
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, check=True,
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


def test_status_is_one_line_after_the_first_backend():
    from xpnn import backends

    backends.current()
    assert allocator.status() != "not applied yet"
    assert "\n" not in allocator.status()
