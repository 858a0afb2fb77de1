"""The CUDA sources of the CuPy backend's kernels (:mod:`xpnn.backends.cupy_kernels` builds
them into ``cupy.ElementwiseKernel`` / ``ReductionKernel`` objects on first use).

Each elementwise kernel is ``(input parameters, output parameters, body)`` and each
per-channel sum ``(input parameters, map expression)``, in CuPy's kernel syntax. The mode
integers are :data:`xpnn.backends.cupy_kernels.NO_ACTIVATION` (0), ``RELU`` (1) and
``LEAKY_RELU`` (2). Plain strings: importing this module needs no CuPy. None of it has run
on a GPU yet.
"""

# Each elementwise kernel is (input parameters, output parameters, body). In a body ``i`` is
# the flat C-order index of the loop over the first non-raw array (its shape); ``raw`` arrays
# are passed contiguous and one-dimensional (``ravel()``) and indexed by hand. Indices are
# computed in ``long long``: a batch's columns can exceed 2**31 entries.

PREAMBLE = r"""
// act(v) after the affine map: mode 0 none, 1 ReLU, 2 LeakyReLU with slope in (0, 1].
template <typename U>
__device__ U xpnn_act(int mode, U v, U slope) {
    if (mode == 1) return v < U(0) ? U(0) : v;      // maximum(v, 0): NaN stays, -inf gives 0
    if (mode == 2) return v < U(0) ? v * slope : v; // maximum(v, slope v): NaN, -inf stay
    return v;
}

// dz from dy and the activation's output y.
template <typename U>
__device__ U xpnn_act_grad(int mode, U dy, U y, U slope) {
    if (mode == 1) return y <= U(0) ? U(0) : dy;       // where(y <= 0, 0, dy): NaN y passes dy
    if (mode == 2) return y > U(0) ? dy : dy * slope;  // where(y > 0, dy, slope dy)
    return dy;
}

__device__ double xpnn_square(double d) { return d * d; }
"""

_GEOMETRY = ("int32 C, int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, "
             "int32 PH, int32 PW, int32 OH, int32 OW")

IM2COL = (
    "raw T x, " + _GEOMETRY,
    "T cols",
    r"""
    // cols is (N, C KH KW, OH OW); x is (N, C, H, W), flat.
    const long long idx = i;
    const long long L = (long long)OH * OW;        // output pixels per image
    const long long K = (long long)C * KH * KW;    // rows per image: (c, ki, kj) row-major
    const long long p = idx % L;                   // output pixel a OW + b
    const long long r = (idx / L) % K;             // row (c KH + ki) KW + kj
    const long long img = idx / (L * K);
    const int a = (int)(p / OW), b = (int)(p % OW);
    const int kj = (int)(r % KW), ki = (int)((r / KW) % KH);
    const long long c = r / ((long long)KH * KW);
    // Tap (ki, kj) of output pixel (a, b) reads input pixel (h, w); outside the image it
    // reads the zero padding (no padded copy of x is made).
    const int h = a * SH - PH + ki, w = b * SW - PW + kj;
    const bool inside = h >= 0 && h < H && w >= 0 && w < W;
    cols = inside ? x[((img * C + c) * H + h) * W + w] : (T)0;
    """,
)

COL2IM = (
    "raw T dcols, " + _GEOMETRY,
    "T dx",
    r"""
    // dx is (N, C, H, W); dcols is (N, C KH KW, OH OW), flat. Each thread gathers the
    // entries of dcols read from its input pixel (h, w): tap (ki, kj) of output pixel
    // (a, b) read it when a SH - PH + ki = h and b SW - PW + kj = w. The taps are walked
    // row-major from 0, the order of the portable col2im's additions; no atomics.
    const long long idx = i;
    const int w = (int)(idx % W), h = (int)((idx / W) % H);
    const long long c = (idx / ((long long)H * W)) % C;
    const long long img = idx / ((long long)C * H * W);
    const long long L = (long long)OH * OW;
    const long long K = (long long)C * KH * KW;
    T total = 0;
    for (int ki = 0; ki < KH; ++ki) {
        const int row = h + PH - ki;               // = a SH for the output row a, if any
        if (row < 0 || row % SH != 0 || row / SH >= OH) continue;
        const int a = row / SH;
        for (int kj = 0; kj < KW; ++kj) {
            const int column = w + PW - kj;        // = b SW for the output column b, if any
            if (column < 0 || column % SW != 0 || column / SW >= OW) continue;
            const int b = column / SW;
            const long long r = (c * KH + ki) * KW + kj;
            total += dcols[(img * K + r) * L + (long long)a * OW + b];
        }
    }
    dx = total;
    """,
)

EPILOGUE = (
    "T v, raw T scale, raw T bias, int64 L, int32 O, int32 has_scale, int32 has_bias, "
    "int32 mode, T slope",
    "T y",
    r"""
    // v and y are (N, O, L); o is the output channel of flat index i. The portable order:
    // y = v scale, then + bias, then the activation.
    const long long o = ((long long)i / L) % O;
    T u = v;
    if (has_scale) u = u * scale[o];
    if (has_bias) u = u + bias[o];
    y = xpnn_act(mode, u, slope);
    """,
)

MAX_POOL = (
    "raw T x, int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, int32 PH, int32 PW, "
    "int32 OH, int32 OW, T lowest",
    "T y",
    r"""
    // y is (N, C, OH, OW); x is (N, C, H, W), flat; plane is where x[n, c] starts. The
    // padding is -inf (lowest), which never changes a running maximum, so it is skipped.
    const long long idx = i;
    const int b = (int)(idx % OW), a = (int)((idx / OW) % OH);
    const long long plane = (idx / ((long long)OH * OW)) * H * W;
    T best = lowest;
    for (int ki = 0; ki < KH; ++ki) {
        const int h = a * SH - PH + ki;
        if (h < 0 || h >= H) continue;
        for (int kj = 0; kj < KW; ++kj) {
            const int w = b * SW - PW + kj;
            if (w < 0 || w >= W) continue;
            const T value = x[plane + (long long)h * W + w];
            if (value > best || value != value) best = value;  // maximum(): NaN wins, stays
        }
    }
    y = best;
    """,
)

MAX_POOL_CHOICE = (
    "T ymax, raw T x, int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, int32 PH, "
    "int32 PW, int32 OH, int32 OW",
    "int32 choice",
    r"""
    // choice and ymax are (N, C, OH, OW): the window offset t = ki KW + kj whose element
    // receives dy, or -1 for none. PyTorch's rule, as the portable backward: the first real
    // element equal to the maximum (an all -inf window: its first real element); for a NaN
    // maximum, the window's last NaN. Padding is never chosen.
    const long long idx = i;
    const int b = (int)(idx % OW), a = (int)((idx / OW) % OH);
    const long long plane = (idx / ((long long)OH * OW)) * H * W;
    const bool nan_max = ymax != ymax;
    int chosen = -1;
    for (int t = 0; t < KH * KW; ++t) {
        const int h = a * SH - PH + t / KW, w = b * SW - PW + t % KW;
        if (h < 0 || h >= H || w < 0 || w >= W) continue;
        const T value = x[plane + (long long)h * W + w];
        if (nan_max) {
            if (value != value) chosen = t;        // keep walking: the last NaN wins
        } else if (value == ymax) {
            chosen = t;                            // the first maximum wins
            break;
        }
    }
    choice = chosen;
    """,
)

MAX_POOL_GATHER = (
    "raw T dy, raw int32 choice, int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, "
    "int32 PH, int32 PW, int32 OH, int32 OW",
    "T dx",
    r"""
    // dx is (N, C, H, W); dy and choice are (N, C, OH, OW), flat. Each thread adds the dy
    // of every window that chose its pixel (h, w): window (a, b) holds it at offset
    // (ki, kj) when a SH - PH + ki = h and b SW - PW + kj = w. Taps row-major from 0, the
    // portable col2im's order; no atomics.
    const long long idx = i;
    const int w = (int)(idx % W), h = (int)((idx / W) % H);
    const long long plane = (idx / ((long long)H * W)) * OH * OW;  // where dy[n, c] starts
    T total = 0;
    for (int ki = 0; ki < KH; ++ki) {
        const int row = h + PH - ki;
        if (row < 0 || row % SH != 0 || row / SH >= OH) continue;
        const int a = row / SH;
        for (int kj = 0; kj < KW; ++kj) {
            const int column = w + PW - kj;
            if (column < 0 || column % SW != 0 || column / SW >= OW) continue;
            const long long o = plane + (long long)a * OW + column / SW;
            if (choice[o] == ki * KW + kj) total += dy[o];
        }
    }
    dx = total;
    """,
)

BN_NORMALIZE = (
    "T x, raw T mean, raw T gain, raw T beta, int64 L, int32 C, int32 has_beta, int32 mode, "
    "T slope",
    "T y",
    r"""
    // x and y are (N, C, L), L = H W (or 1); c is the channel of flat index i.
    // The portable order: (x - mean) gain, then + beta, then the activation.
    const long long c = ((long long)i / L) % C;
    T v = (x - mean[c]) * gain[c];
    if (has_beta) v = v + beta[c];
    y = xpnn_act(mode, v, slope);
    """,
)

BN_INPUT_GRADIENT = (
    "T dy, T y, T x, raw T mean, raw T gain, raw T k1, raw T k2, int64 L, int32 C, "
    "int32 mode, T slope",
    "T dx",
    r"""
    // All (N, C, L); dx = dz gain - ((x - mean) k1 + k2), the portable order.
    const long long c = ((long long)i / L) % C;
    const T dz = xpnn_act_grad(mode, dy, y, slope);
    dx = dz * gain[c] - ((x - mean[c]) * k1[c] + k2[c]);
    """,
)

# Per-channel sums, each (input parameters, map expression), accumulated in float64.
BN_CENTRED_SQUARES = ("T x, T mu", "xpnn_square((double)(x - mu))")
BN_SUM_DZ = ("T dy, T y, int32 mode, T slope", "(double)xpnn_act_grad(mode, dy, y, slope)")
BN_SUM_DZ_CENTRED = ("T dy, T y, T x, T mu, int32 mode, T slope",
                     "(double)xpnn_act_grad(mode, dy, y, slope) * (double)(x - mu)")
