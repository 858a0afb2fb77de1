import os
import subprocess
import sys

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import BackendError


def test_unknown_backend_lists_valid_names():
    with pytest.raises(BackendError, match="Unknown backend 'tensorflow'.*numpy, torch, cupy"):
        backends.use("tensorflow")


def test_missing_or_unusable_backend_says_what_to_install(monkeypatch):
    backends.probe.cache_clear()
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` fail
    try:
        with pytest.raises(BackendError, match="XPNN_BACKEND=jax.*pip install jax"):
            backends.use("jax")
    finally:
        backends.probe.cache_clear()


def test_cupy_without_gpu_is_a_clear_error_or_works():
    can_run, _, reason = backends.probe("cupy")
    if can_run:
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(BackendError, match="XPNN_BACKEND=cupy, but it cannot run here"):
        backends.use("cupy")
    assert reason


def test_use_is_a_context_manager_that_restores():
    before = backends.current().name
    with backends.use("array_api_strict", device="device1") as active:
        assert backends.current() is active and active.name == "array_api_strict"
    assert backends.current().name == before


def test_environment_variable_is_read_on_first_use_not_at_import():
    code = ("import os, xpnn; os.environ['XPNN_BACKEND'] = 'array_api_strict'; "
            "print(xpnn.backends.current().name)")
    env = {k: v for k, v in os.environ.items() if k != "XPNN_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "array_api_strict", out.stderr


def test_import_does_not_import_cupy_or_torch():
    code = ("import sys, xpnn, xpnn.layers; print('cupy' in sys.modules, 'torch' in "
            "sys.modules, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False False", out.stderr


def test_available_lists_numpy_and_doctor_runs():
    assert "numpy" in backends.available()
    out = subprocess.run([sys.executable, "-m", "xpnn.backends"], capture_output=True, text=True)
    assert out.returncode == 0 and "array_api_strict" in out.stdout and "cupy" in out.stdout
    assert "NumPy fast path (compiled kernels, xpnn[fast]): " in out.stdout


def test_the_numba_fast_path_is_reported_and_switched_by_xpnn_numba(monkeypatch):
    from xpnn.backends import numba_support

    monkeypatch.setenv("XPNN_NUMBA", "0")
    assert not numba_support.enabled()
    assert numba_support.describe().startswith("off: XPNN_NUMBA='0'")
    monkeypatch.delenv("XPNN_NUMBA")
    if not numba_support._installed():
        assert not numba_support.enabled()
        assert "numba is not installed" in numba_support.describe()
        assert 'pip install "xpnn[fast]"' in numba_support.describe()
    else:
        assert numba_support.enabled()
        assert numba_support.describe().startswith("on (numba ")


def test_without_numba_the_numpy_backend_runs_the_portable_kernels(monkeypatch):
    from xpnn.backends import numba_batchnorm, numba_support

    monkeypatch.setattr(numba_support, "_installed", lambda: False)
    assert not numba_support.enabled()
    assert numba_support.describe().startswith("off: numba is not installed")
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype("float32")
    y, _, _, saved = backends.make_backend("numpy").ops.batchnorm_train(x, None, None, 1e-5)
    assert not isinstance(saved, numba_batchnorm._Saved)
    assert abs(float(y.mean())) < 1e-5


def test_round_trip_between_host_and_backend(backend):
    host = np.arange(6, dtype="float32").reshape(2, 3)
    array = backend.asarray(host)
    assert isinstance(array, backend.array_type)
    np.testing.assert_array_equal(backend.to_numpy(array), host)
    host[0, 0] = 99  # the backend array is a copy
    assert backend.to_numpy(array)[0, 0] == 0



def test_a_numba_that_fails_to_import_is_named_when_a_kernel_is_built(monkeypatch):
    from xpnn.backends import numba_support
    from xpnn.errors import BackendError

    monkeypatch.setattr(numba_support, "_numba",
                        lambda: (None, "numba is installed but failed to import (boom)"))
    with pytest.raises(BackendError, match="need numba: numba is installed but failed"):
        numba_support.jit()


def test_without_a_writable_numba_cache_the_kernels_compile_uncached(monkeypatch):
    """numba refuses cache=True where it can write no cache file; xpnn then compiles
    without one instead of failing."""
    from types import SimpleNamespace

    from xpnn.backends import numba_support

    calls = []

    def njit(**options):
        calls.append(options["cache"])
        if options["cache"]:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return lambda function: function

    monkeypatch.setattr(numba_support, "_numba", lambda: (SimpleNamespace(njit=njit), ""))

    def kernel():
        return 1

    assert numba_support.jit(fastmath=False)(kernel) is kernel
    assert calls == [True, False]
