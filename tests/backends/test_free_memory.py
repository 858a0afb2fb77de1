"""xpnn.backends.free_memory(): give back what a library keeps for reuse."""

import inspect

import numpy as np

from xpnn import backends


def test_free_memory_says_what_it_did_on_every_backend(backend):
    x = backend.asarray(np.ones((256, 1024), dtype=np.float32))  # something was allocated
    del x
    said = backends.free_memory(backend)
    assert said.startswith(f"{backend.name}: ") and len(said) > len(backend.name) + 10


def test_the_current_backend_is_the_default():
    with backends.use("numpy"):
        assert backends.free_memory().startswith("numpy: ")


def test_every_library_hook_takes_the_device():
    for name in backends.NAMES:
        module = __import__(backends.LIBRARIES[name], fromlist=["_"])
        hook = getattr(module, "free_memory", None)
        if hook is not None:
            assert list(inspect.signature(hook).parameters) == ["device"], name
