import array_api_compat
import numpy as np
import pytest

from xpnn.backends import linalg
from xpnn.errors import ShapeError
from xpnn.testing import assert_close


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outer_is_the_product_of_every_pair_on_every_backend(backend, dtype):
    rng = np.random.default_rng(0)
    a_host, b_host = rng.standard_normal(128), rng.standard_normal(784)
    a, b = backend.asarray(a_host, dtype), backend.asarray(b_host, dtype)
    product = linalg.outer(a, b)
    assert tuple(product.shape) == (128, 784)
    assert product.dtype == a.dtype
    assert array_api_compat.device(product) == backend.device
    assert_close(product, np.multiply.outer(a_host, b_host).astype(dtype), rtol=1e-6,
                 backend=backend)


def test_outer_refuses_arrays_that_are_not_vectors():
    with pytest.raises(ShapeError, match=r"1-D.*\(1, 3\)"):
        linalg.outer(np.ones((1, 3)), np.ones(2))
