"""EXPERIMENT (not used by xpnn): Winograd F(2x2, 3x3) convolution for NumPy, 3x3 stride-1
convolutions with 2.25x fewer multiplications than im2col (Lavin & Gray 2016, "Fast
Algorithms for Convolutional Neural Networks", Sec. 4).

Correct (float32 error 2-8e-7 relative to the direct convolution) but slower than xpnn's
im2col + OpenBLAS path at every Darknet53 shape measured on the 2-core benchmark machine
(1 thread, batch 1: 0.69x-8x the time; see benchmarks/results/NOTES.md): the transforms are
strided NumPy passes over 4x the input and output, the 16 products have a small inner
dimension (C instead of 9 C) which OpenBLAS runs at half the efficiency, and the filter
transform (two tensordots) is recomputed per call since xpnn's weights change in place.
Kept here, with ``python -m benchmarks.experiments.winograd``, for whoever tries again
(a native kernel, or cached filter transforms for inference, would change the answer).

The output is cut into 2x2 tiles; each needs the 4x4 input tile ``d`` around it. With

    B^T = [[1, 0, -1, 0],        G = [[1,    0,   0  ],        A^T = [[1, 1,  1,  0],
           [0, 1,  1, 0],             [1/2,  1/2, 1/2],               [0, 1, -1, -1]]
           [0, -1, 1, 0],             [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]            [0,    0,   1  ]]

a tile of the output is ``Y = A^T [ sum_c (G g_oc G^T) ⊙ (B^T d_c B) ] A`` (Lavin & Gray eq. 8):
the 16 entries of the transformed tiles turn the sum over input channels into 16
independent matrix products ``M[k] = U[k] (O, C) @ V[k] (C, tiles)``, 2 O C multiply-adds
per output pixel instead of 9 O C. The transforms are additions on strided views, written
with ``out=`` into buffers allocated once per call.

In float32 the result differs from the direct convolution by rounding only (the
transforms' coefficients are 0, ±1/2 and ±1); tests compare the two.
"""

from __future__ import annotations

import numpy as np

# The filter transform G (4x3); B^T and A^T are applied as the additions written out below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

# Bytes of transformed input tiles (V) per chunk of images.
_CHUNK_BYTES = 16 << 20


def applies(x_shape, w_shape, stride, padding) -> bool:
    """Whether :func:`conv2d` handles this convolution, and pays: 3x3 kernel, stride 1,
    padding at most 2, and enough channels and tiles for the matrix products to dominate
    the transforms."""
    n, c, h, width = x_shape
    o, _, kh, kw = w_shape
    if (kh, kw) != (3, 3) or tuple(stride) != (1, 1) or max(padding) > 2:
        return False
    out_h, out_w = h + 2 * padding[0] - 2, width + 2 * padding[1] - 2
    if out_h < 2 or out_w < 2:
        return False
    return c >= _MIN_CHANNELS and o >= _MIN_CHANNELS and n * out_h * out_w >= _MIN_PIXELS


_MIN_CHANNELS = 32
_MIN_PIXELS = 256


def filter_transform(w: np.ndarray) -> np.ndarray:
    """``U[k, l] = (G w[o, c] G^T)[k, l]`` for every (o, c), as ``(16, O, C)``."""
    g = np.asarray(_G, dtype=w.dtype)
    o, c = w.shape[:2]
    rows = np.tensordot(g, w, axes=([1], [2]))          # (4, O, C, 3):  G w
    u = np.tensordot(rows, g, axes=([3], [1]))          # (4, O, C, 4):  G w G^T
    return np.ascontiguousarray(u.transpose(0, 3, 1, 2)).reshape(16, o, c)


def conv2d(x: np.ndarray, w: np.ndarray, padding) -> np.ndarray:
    """3x3 stride-1 cross-correlation of ``x (N, C, H, W)`` with ``w (O, C, 3, 3)`` and
    zero padding ``(ph, pw)``: ``(N, O, OH, OW)`` (no bias)."""
    n, c, h, width = x.shape
    o = w.shape[0]
    ph, pw = padding
    out_h, out_w = h + 2 * ph - 2, width + 2 * pw - 2
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    dtype = np.result_type(x, w)
    u = filter_transform(w.astype(dtype, copy=False))
    y = np.empty((n, o, out_h, out_w), dtype=dtype)
    per_image = 16 * c * tiles_h * tiles_w * y.itemsize
    chunk = max(1, min(n, _CHUNK_BYTES // per_image))
    work = _Buffers(chunk, c, o, h, width, padding, tiles_h, tiles_w, dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        v = work.input_transform(x[start:stop])                      # (16, C, P)
        m = np.matmul(u, v, out=work.products[:, :, : v.shape[2]])   # (16, O, P)
        work.output_transform(m, y[start:stop])
    return y


class _Buffers:
    """Work arrays of one call: the padded chunk, the row-transformed tiles, the
    transformed tiles V, the products M and the half-transformed outputs."""

    def __init__(self, chunk, c, o, h, width, padding, tiles_h, tiles_w, dtype):
        self.chunk, self.hw, self.padding = chunk, (h, width), padding
        self.tiles = (tiles_h, tiles_w)
        # 2 t + 2 rows cover the padded input (one extra zero row when OH is odd).
        self.padded = np.zeros((chunk, c, 2 * tiles_h + 2, 2 * tiles_w + 2), dtype=dtype)
        self.rows = np.empty((4, chunk, c, tiles_h, 2 * tiles_w + 2), dtype=dtype)
        self.v = np.empty((16, c, chunk, tiles_h, tiles_w), dtype=dtype)
        self.products = np.empty((16, o, chunk * tiles_h * tiles_w), dtype=dtype)
        self.half = np.empty((2, 4, o, chunk, tiles_h, tiles_w), dtype=dtype)

    def input_transform(self, xs: np.ndarray) -> np.ndarray:
        """``V = B^T d B`` for every 4x4 input tile of ``xs (n, C, H, W)``: ``(16, C, P)``
        with ``P = n * tiles_h * tiles_w``."""
        n = xs.shape[0]
        (ph, pw), (h, width), (th, tw) = self.padding, self.hw, self.tiles
        padded = self.padded[:n]
        padded[:, :, ph:ph + h, pw:pw + width] = xs
        # B^T on the rows: r_i = rows i, i + 2, ... of the padded chunk.
        r = [padded[:, :, i:i + 2 * th - 1:2, :] for i in range(4)]
        t = self.rows[:, :n]
        np.subtract(r[0], r[2], out=t[0])
        np.add(r[1], r[2], out=t[1])
        np.subtract(r[2], r[1], out=t[2])
        np.subtract(r[1], r[3], out=t[3])
        # ... then B on the columns, written channel-major: V[4k + l] is (C, n, th, tw).
        v = self.v[:, :, :n]
        for k in range(4):
            col = [t[k][..., j:j + 2 * tw - 1:2] for j in range(4)]
            out = [v[4 * k + col_].transpose(1, 0, 2, 3) for col_ in range(4)]
            np.subtract(col[0], col[2], out=out[0])
            np.add(col[1], col[2], out=out[1])
            np.subtract(col[2], col[1], out=out[2])
            np.subtract(col[1], col[3], out=out[3])
        c = v.shape[1]
        if n == self.chunk:
            return self.v.reshape(16, c, n * th * tw)
        return np.ascontiguousarray(v).reshape(16, c, n * th * tw)

    def output_transform(self, m: np.ndarray, y: np.ndarray) -> None:
        """``Y = A^T M A`` for every tile, written into ``y (n, O, OH, OW)``."""
        n, o, out_h, out_w = y.shape
        th, tw = self.tiles
        m = m.reshape(4, 4, o, n, th, tw)
        half = self.half[:, :, :, :n]
        for col_ in range(4):  # A^T on the first tile axis
            np.add(m[0, col_], m[1, col_], out=half[0, col_])
            half[0, col_] += m[2, col_]
            np.subtract(m[1, col_], m[2, col_], out=half[1, col_])
            half[1, col_] -= m[3, col_]
        y_t = y.transpose(1, 0, 2, 3)  # (O, n, OH, OW)
        for i in range(2):  # ... and A on the second, into the strided output pixels
            rows = (out_h - i + 1) // 2
            s = half[i][..., :rows, :]
            for j in range(2):
                cols = (out_w - j + 1) // 2
                target = y_t[:, :, i::2, j::2]
                a, b, c = (s[0], s[1], s[2]) if j == 0 else (s[1], s[2], s[3])
                a, b, c = a[..., :cols], b[..., :cols], c[..., :cols]
                if j == 0:
                    np.add(a, b, out=target)
                    target += c
                else:
                    np.subtract(a, b, out=target)
                    target -= c


def main() -> None:
    """A/B against the im2col path at Darknet53 shapes, one thread of whatever BLAS runs."""
    import time

    from xpnn.backends import numpy_conv

    rng = np.random.default_rng(0)
    for n, c, size, o in [(1, 32, 128, 64), (1, 128, 32, 256), (1, 512, 8, 1024),
                          (8, 128, 32, 256)]:
        x = rng.standard_normal((n, c, size, size), dtype=np.float32)
        w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
        direct = numpy_conv.conv2d(None, x, w, None, (1, 1), (1, 1))
        error = float(np.max(np.abs(conv2d(x, w, (1, 1)) - direct)) / np.max(np.abs(direct)))
        best = {}
        runs = (("im2col", lambda x=x, w=w: numpy_conv.conv2d(None, x, w, None, (1, 1),
                                                                   (1, 1))),
                ("winograd", lambda x=x, w=w: conv2d(x, w, (1, 1))))
        for name, run in runs:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            best[name] = min(times)
        print(f"batch {n}, {c}->{o} @{size}: im2col {best['im2col'] * 1e3:.1f} ms, winograd "
              f"{best['winograd'] * 1e3:.1f} ms, relative error {error:.1e}")


if __name__ == "__main__":
    main()
