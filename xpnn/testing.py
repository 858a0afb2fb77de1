"""Assertions for tests of xpnn code on any backend."""

from __future__ import annotations

import numpy as np

from xpnn import backends


def assert_close(actual, expected, *, rtol: float = 1e-6, atol: float = 0.0,
                 backend: backends.Backend | None = None) -> None:
    """Assert that ``actual`` (an array of any backend) equals ``expected`` (host values)
    within tolerance, and, when ``backend`` is given, that ``actual`` belongs to it and
    lives on its device."""
    if backend is not None:
        assert isinstance(actual, backend.array_type), (
            f"expected an array of the {backend.name} backend, got {type(actual)}"
        )
        if backend.name not in ("numpy", "jax"):
            assert actual.device == backend.device, (
                f"expected device {backend.device!r}, got {actual.device!r}"
            )
    np.testing.assert_allclose(
        backends.to_numpy(actual), backends.to_numpy(expected), rtol=rtol, atol=atol
    )
