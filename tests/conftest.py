"""Test fixtures: every backend test runs once per backend.

``backend`` yields an active :class:`xpnn.backends.Backend`. array-api-strict runs on its
non-default ``device1``, so a forgotten ``device=`` fails here as it would on a GPU. CuPy
and torch show as SKIPPED, with the reason, where they cannot run.
"""

import pytest

from xpnn import backends

BACKEND_PARAMS = [
    pytest.param(("numpy", None), id="numpy"),
    pytest.param(("array_api_strict", "device1"), id="array_api_strict"),
    pytest.param(("torch", None), id="torch"),
    pytest.param(("cupy", None), id="cupy"),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    name, device = request.param
    can_run, _, reason = backends.probe(name)
    if not can_run:
        pytest.skip(f"{name} backend unavailable: {reason}")
    with backends.use(name, device=device) as active:
        yield active
