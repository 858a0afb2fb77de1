"""Dropout (Srivastava et al. 2014) with inverted scaling, as PyTorch's ``nn.Dropout``.

In training, each value is kept with probability 1 - p and scaled so that the expected
output equals the input; at inference the layer is the identity:

    training:   y = x ⊙ m,   m_i = 1 / (1 - p) with probability 1 - p, else 0
    inference:  y = x

Backward: dx = dy ⊙ m, with the same mask m as the forward (dx = dy at inference).

The Array API standard has no random numbers, so the mask is drawn on the host from a
NumPy generator (``seed``, or the global one of :func:`xpnn.backends.host_rng`) and moved
to the layer's backend: one seed gives the same masks on every backend. Every training
forward draws a new mask, so the stream advances once per call.
"""

from __future__ import annotations

from xpnn.backends import host_rng
from xpnn.module import Module
from xpnn.validation import floating_input, grad_shape, integer, number


class Dropout(Module):
    """Zero each value with probability ``p`` in training and scale the others by
    ``1 / (1 - p)``; the identity at inference (``train=False``).

    Parameters
    ----------
    p : float
        Probability of zeroing a value, in [0, 1) (default 0.5, as PyTorch). ``p=0`` is
        the identity.
    seed : int, optional
        Seed of the layer's own host generator of masks. Without it masks come from the
        global generator (:func:`xpnn.backends.seed` makes them reproducible).

    Attributes
    ----------
    generator : numpy.random.Generator or None
        The layer's generator (None: the global one). Assign a fresh one to restart the
        stream of masks.

    Examples
    --------
    >>> import numpy as np
    >>> layer = Dropout(0.5, seed=0)
    >>> y, _ = layer.forward(np.ones((2, 4), dtype="float32"), train=True)
    >>> sorted(set(y.ravel().tolist()))
    [0.0, 2.0]
    >>> layer(np.ones((2, 4), dtype="float32"))[0]
    array([1., 1., 1., 1.], dtype=float32)
    """

    def __init__(self, p: float = 0.5, *, seed=None):
        super().__init__()
        self.p = number("Dropout", "p", p, low=0.0, high=1.0, high_inclusive=False)
        self.seed = None if seed is None else integer("Dropout", "seed", seed, low=0)
        self.generator = None if seed is None else host_rng(self.seed)

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        if x.dtype != xp.float32 and x.dtype != xp.float64:
            floating_input(self, x)
        shape = tuple(x.shape)
        if not train or self.p == 0.0:

            def identity(dy, *, need_input_grad: bool = True):
                grad_shape(self, dy, shape)
                return dy if need_input_grad else None

            return x, identity

        rng = self.generator if self.generator is not None else host_rng()
        keep = rng.random(shape) >= self.p  # host booleans, each True with probability 1 - p
        mask = self.backend.asarray(keep, dtype=x.dtype, copy=False) * (1.0 / (1.0 - self.p))
        y = x * mask

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            return dy * mask if need_input_grad else None

        return y, backprop

    def split_stream(self, rank: int) -> None:
        """Draw masks from a stream of this rank's own (data-parallel training, where each
        rank holds a different slice of the batch: the same stream would give every slice
        the same mask). The stream is seeded by ``(seed, rank)``, or by a number drawn once
        from the global generator and ``rank``, so a run is reproducible."""
        base = self.seed if self.seed is not None else int(host_rng().integers(2**63 - 1))
        self.generator = host_rng([base, int(rank)])

    def config(self) -> dict:
        return {"p": self.p, "seed": self.seed}

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
