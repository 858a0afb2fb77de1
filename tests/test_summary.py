"""Module.summary(input_shape): Keras' layer table with output shapes, parameters and FLOPs
(xpnn/summary.py); summary() without arguments keeps its parameter table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpnn.errors import ConfigError, ShapeError
from xpnn.layers import Conv2D, Dense, Flatten, Identity, ReLU, Sequential
from xpnn.models import darknet53, mnist_cnn, mnist_mlp
from xpnn.summary import FLOP_COUNTERS, format_flops, register_flops, trace

MNIST_CNN_TABLE = """\
Layer (type)                 Output shape          Param #       FLOPs
======================================================================
0 (ConvBNAct)                (None, 16, 28, 28)        176     225,792
1 (ConvBNAct)                (None, 32, 14, 14)      4,672   1,806,336
2 (Residual)                 (None, 32, 14, 14)      5,216   2,007,040
  2.block (Sequential)       (None, 32, 14, 14)      5,216   2,007,040
    2.block.0 (ConvBNAct)    (None, 16, 14, 14)        544     200,704
    2.block.1 (ConvBNAct)    (None, 32, 14, 14)      4,672   1,806,336
3 (ConvBNAct)                (None, 64, 7, 7)       18,560   1,806,336
4 (Residual)                 (None, 64, 7, 7)       20,672   2,007,040
  4.block (Sequential)       (None, 64, 7, 7)       20,672   2,007,040
    4.block.0 (ConvBNAct)    (None, 32, 7, 7)        2,112     200,704
    4.block.1 (ConvBNAct)    (None, 64, 7, 7)       18,560   1,806,336
5 (GlobalAvgPool)            (None, 64)                  0           0
6 (Dense)                    (None, 10)                650       1,280
======================================================================
Input shape: (None, 1, 28, 28)
Total params: 49,946
Total FLOPs: 7,853,824 (7.85 MFLOP) for 1 sample (2 per multiply-accumulate of Conv2D and Dense)"""


def test_darknet53_is_18_57_gflop_at_256():
    model = darknet53(seed=0)
    root = trace(model, (1, 3, 256, 256))[0]
    # 2 x the multiply-accumulates of the 52 convolutions and the classifier.
    assert root.flops == 18_570_231_808
    assert round(root.flops / 1e9, 2) == 18.57
    text = model.summary((1, 3, 256, 256), depth=1)
    assert "Total FLOPs: 18,570,231,808 (18.57 GFLOP) for 1 sample" in text
    assert "Total params: 41,609,928" in text
    rows = text.splitlines()[2:9]
    assert [row.split()[0] for row in rows] == [
        "stem", "stages.0", "stages.1", "stages.2", "stages.3", "stages.4", "head"]
    assert "(1, 1024, 8, 8)" in rows[5] and "(1, 1000)" in rows[6]


def test_the_mnist_cnn_table():
    model = mnist_cnn()
    assert model.summary((None, 1, 28, 28)) == MNIST_CNN_TABLE
    assert model.num_parameters() == 49_946


def test_container_rows_hold_the_sums_of_their_layers_and_depth_limits_rows():
    model = mnist_cnn()
    calls = trace(model, (2, 1, 28, 28))
    by_path = {call.path: call for call in calls}
    assert by_path["2"].flops == by_path["2.block.0"].flops + by_path["2.block.1"].flops
    assert by_path[""].flops == 2 * 7_853_824  # a batch of 2
    shallow = model.summary((None, 1, 28, 28), depth=1).splitlines()
    assert [line.split()[0] for line in shallow[2:9]] == ["0", "1", "2", "3", "4", "5", "6"]
    assert shallow[-1] == MNIST_CNN_TABLE.splitlines()[-1]


def test_flop_counts_of_conv_and_dense():
    conv = Conv2D(3, 8, 3, stride=2, padding=1)
    (root,) = trace(conv, (2, 3, 16, 16))
    assert root.output_shape == (2, 8, 8, 8)
    assert root.flops == 2 * (8 * 3 * 3 * 3) * (2 * 8 * 8)
    dense = Sequential([Dense(5, 4), ReLU()])
    calls = trace(dense, (3, 7, 5))  # Dense over the last axis of (N, T, in)
    assert calls[1].flops == 2 * 5 * 4 * 3 * 7 and calls[2].flops == 0


def test_mlp_table_with_a_fixed_batch():
    text = mnist_mlp().summary((4, 1, 28, 28))
    lines = text.splitlines()
    assert lines[2].split() == ["0", "(Flatten)", "(4,", "784)", "0", "0"]
    assert lines[3].split() == ["1", "(Dense)", "(4,", "128)", "100,480", f"{2 * 4 * 100_352:,}"]
    assert "for 4 samples" in lines[-1]


def test_summary_without_arguments_is_the_parameter_table():
    text = mnist_mlp().summary()
    assert text.splitlines()[0].split() == ["parameter", "shape", "count"]
    assert text.splitlines()[-1].split() == ["total", "101,770"]


@pytest.mark.parametrize("shape", [(None, None, 4), (0, 4), "4", (), (1.5, 4)])
def test_bad_input_shapes(shape):
    with pytest.raises(ConfigError, match="input_shape"):
        mnist_mlp().summary(shape)


def test_a_shape_the_model_refuses_and_the_model_is_left_as_it_was():
    model = mnist_cnn()
    with pytest.raises(ShapeError):
        model.summary((None, 3, 28, 28))
    with pytest.raises(ConfigError, match="depth"):
        model.summary((None, 1, 28, 28), depth=0)
    assert all("forward" not in vars(module) for module in model.modules())
    x = np.zeros((1, 1, 28, 28), dtype="float32")
    assert model(x).shape == (1, 10)


def test_register_flops_for_a_layer_of_your_own():
    class Scale(Identity):
        pass

    register_flops(Scale, lambda module, in_shape, out_shape: math.prod(out_shape))
    try:
        calls = trace(Sequential([Flatten(), Scale()]), (2, 3, 4))
        assert calls[-1].flops == 24 and calls[0].flops == 24
    finally:
        del FLOP_COUNTERS[Scale]
    with pytest.raises(ConfigError):
        register_flops(int)


def test_format_flops():
    assert format_flops(18_570_231_808) == "18.57 GFLOP"
    assert format_flops(7_853_824) == "7.85 MFLOP"
    assert format_flops(1_500) == "1.50 KFLOP"
    assert format_flops(0) == "0 FLOP"


def test_a_single_layer_is_one_row():
    from xpnn.layers import ConvBNAct

    for layer, pixels in ((Conv2D(3, 8, 3), 6 * 6), (ConvBNAct(3, 8, 3, fold=False), 8 * 8)):
        lines = layer.summary((None, 3, 8, 8)).splitlines()
        assert lines[2].split()[:2] == ["model", f"({type(layer).__name__})"]
        assert lines[3].startswith("=")
        assert lines[2].split()[-1] == f"{2 * 8 * 27 * pixels:,}"


def test_batchnorm_options_in_the_parameter_counts_and_the_table():
    """affine=False leaves γ and β out of every count; a BatchNorm without running
    statistics needs two samples at inference, so the table runs on two (and says so)."""
    from xpnn.layers import BatchNorm, ConvBNAct

    model = Sequential([ConvBNAct(1, 4, 3, affine=False), Flatten(),
                        Dense(4 * 5 * 5, 6, seed=0), BatchNorm(6, affine=False),
                        BatchNorm(6, track_running_stats=False)])
    assert model.num_parameters() == 4 * 9 + (4 * 25 * 6 + 6) + 2 * 6
    assert model.summary().splitlines()[-1].split() == ["total", f"{model.num_parameters():,}"]
    text = model.summary((None, 1, 5, 5))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:7]}
    assert rows["0"][-2:] == ["36", f"{2 * 36 * 25 * 2:,}"]
    assert rows["3"][-2:] == ["0", "0"] and rows["4"][-2:] == ["12", "0"]
    assert rows["4"][2:4] == ["(None,", "6)"]
    assert f"Total params: {model.num_parameters():,}" in text
    flops = 2 * (4 * 9 * 25 + 100 * 6) * 2  # conv and Dense, two samples
    assert flops == 6_000 and text.splitlines()[-1] == (
        "Total FLOPs: 6,000 (6.00 KFLOP) for 2 samples (2 per multiply-accumulate of Conv2D "
        "and Dense)")
    assert trace(model, (None, 1, 5, 5))[0].input_shape == (2, 1, 5, 5)
    assert trace(model, (3, 1, 5, 5))[0].input_shape == (3, 1, 5, 5)
    assert trace(mnist_mlp(), (None, 1, 28, 28))[0].input_shape == (1, 1, 28, 28)
