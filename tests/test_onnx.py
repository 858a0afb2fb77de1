"""xpnn.onnx: exported graphs pass onnx.checker and compute what xpnn computes, under
onnxruntime on the CPU, at two batch sizes through one dynamic batch axis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import xpnn  # noqa: E402
import xpnn.onnx  # noqa: E402
from xpnn import layers  # noqa: E402
from xpnn.errors import ConfigError, DataError, ShapeError  # noqa: E402
from xpnn.layers import (  # noqa: E402
    BatchNorm,
    Conv2D,
    ConvBNAct,
    Dense,
    Flatten,
    GlobalAvgPool,
    Identity,
    LeakyReLU,
    MaxPool2D,
    Module,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from xpnn.models import darknet53, mnist_cnn, mnist_mlp  # noqa: E402

TOLERANCE = 1e-4  # absolute and relative, float32


def randomize_batchnorm(model, seed=1):
    """Running statistics and affine parameters away from their defaults, so that the
    folding of BatchNorm is exercised (the arrays each BatchNorm has: ``affine=False`` and
    ``track_running_stats=False`` leave some out)."""
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, BatchNorm):
            c = module.num_features
            values = {
                "weight": rng.uniform(0.5, 1.5, c).astype("float32"),
                "bias": rng.normal(0.0, 0.1, c).astype("float32"),
                "running_mean": rng.normal(0.0, 0.1, c).astype("float32"),
                "running_var": rng.uniform(0.5, 2.0, c).astype("float32"),
            }
            module.load_state_dict({name: value for name, value in values.items()
                                    if name in module.state_dict()})
    return model


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def max_errors(got, want):
    error = np.abs(got.astype("float64") - want.astype("float64"))
    return float(error.max()), float((error / np.maximum(np.abs(want), 1e-3)).max())


def assert_matches(model, path, shape, batches, seed=0):
    """Run the file at each batch size and compare with ``model(x)``; return the errors."""
    rng = np.random.default_rng(seed)
    errors = {}
    for batch in batches:
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        got, want = run_onnx(path, x), xpnn.backends.to_numpy(model(x))
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)
        errors[batch] = max_errors(got, want)
    return errors


def export_checked(model, path, input_shape, **options):
    proto = xpnn.onnx.export(model, path, input_shape, **options)
    onnx.checker.check_model(str(path), full_check=True)  # the file, as written
    return proto


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# -- the models of the issue -------------------------------------------------------------------

def test_mnist_mlp_matches_onnxruntime_at_two_batch_sizes(tmp_path):
    model = mnist_mlp(hidden=(128, 64), seed=3)
    path = tmp_path / "mlp.onnx"
    proto = export_checked(model, path, (None, 1, 28, 28))
    assert [node.op_type for node in proto.graph.node] == [
        "Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    assert dims(proto.graph.input[0]) == ["batch", 1, 28, 28]
    assert dims(proto.graph.output[0]) == ["batch", 10]
    print("mlp", assert_matches(model, path, (1, 28, 28), (1, 7)))


def test_mnist_cnn_matches_onnxruntime_at_two_batch_sizes(tmp_path):
    model = randomize_batchnorm(mnist_cnn(seed=3))
    path = tmp_path / "cnn.onnx"
    proto = export_checked(model, path, (None, 1, 28, 28))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == 7 and ops.count("Add") == 2
    assert "BatchNormalization" not in ops  # folded into the convolutions
    print("cnn", assert_matches(model, path, (1, 28, 28), (1, 8)))


def test_pretrained_mnist_models_match(tmp_path):
    for build in (mnist_mlp, mnist_cnn):
        model = build(pretrained=True)
        path = tmp_path / f"{build.__name__}.onnx"
        export_checked(model, path, (None, 1, 28, 28))
        assert_matches(model, path, (1, 28, 28), (2, 5))


def test_darknet53_matches_onnxruntime_at_two_batch_sizes(tmp_path):
    model = randomize_batchnorm(darknet53(seed=0))
    path = tmp_path / "darknet53.onnx"
    proto = export_checked(model, path, (None, 3, 64, 64))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == 52 and ops.count("Add") == 23 and ops.count("Gemm") == 1
    assert {init.name for init in proto.graph.initializer} >= {
        "stem.conv1.conv.weight", "stages.4.blocks.3.conv2.conv.bias", "head.fc.weight"}
    print("darknet53 64x64", assert_matches(model, path, (3, 64, 64), (1, 3)))


def test_darknet53_at_256_matches_with_a_fixed_batch(tmp_path):
    model = randomize_batchnorm(darknet53(seed=0, negative_slope=0.1))
    path = tmp_path / "darknet53_256.onnx"
    proto = export_checked(model, path, (1, 3, 256, 256))
    assert dims(proto.graph.input[0]) == [1, 3, 256, 256]
    assert dims(proto.graph.output[0]) == [1, 1000]
    assert json.loads(proto.metadata_props[0].value) == model.preprocessing
    print("darknet53 256x256", assert_matches(model, path, (3, 256, 256), (1,)))


def test_a_float64_model_exports_as_float32_on_request(tmp_path):
    model = randomize_batchnorm(mnist_cnn(dtype="float32"))
    double = mnist_cnn(dtype="float64").load_state_dict(
        {name: np.asarray(value, dtype="float64") for name, value in model.state_dict().items()})
    path = tmp_path / "cnn.onnx"
    proto = export_checked(double, path, (None, 1, 28, 28), dtype="float32")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert_matches(model, path, (1, 28, 28), (2,))
    proto64 = export_checked(double, tmp_path / "cnn64.onnx", (None, 1, 28, 28))
    assert proto64.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


def test_export_on_every_backend(backend, tmp_path):
    model = randomize_batchnorm(Sequential([ConvBNAct(2, 4, 3), MaxPool2D(2), Flatten(),
                                            Dense(4 * 3 * 3, 3), Softmax()], seed=0))
    path = tmp_path / "small.onnx"
    export_checked(model, path, (None, 2, 6, 6))
    assert_matches(model, path, (2, 6, 6), (1, 2))


# -- every layer --------------------------------------------------------------------------------

def all_layers_model():
    return Sequential([
        Conv2D(3, 8, 3, stride=2, padding=1),
        BatchNorm(8),
        LeakyReLU(0.2),
        MaxPool2D(3, stride=2, padding=1),
        Residual(Sequential([ConvBNAct(8, 8, 3, activation="relu"), Tanh()])),
        ConvBNAct(8, 6, 1, activation=Sigmoid(), fold=False),
        ConvBNAct(6, 6, 3, activation="identity"),
        Identity(),
        Flatten(),
        Dense(6 * 4 * 4, 12),
        BatchNorm(12),
        ReLU(),
        Dense(12, 5),
        Softmax(),
    ], seed=5)


def test_every_layer_type_exports_and_matches(tmp_path):
    model = randomize_batchnorm(all_layers_model())
    path = tmp_path / "all.onnx"
    proto = export_checked(model, path, (None, 3, 16, 16))
    ops = {node.op_type for node in proto.graph.node}
    assert ops >= {"Conv", "BatchNormalization", "LeakyRelu", "MaxPool", "Relu", "Tanh",
                   "Add", "Sigmoid", "Identity", "Flatten", "Gemm", "Softmax"}
    assert_matches(model, path, (3, 16, 16), (1, 4))


def test_global_pool_and_dense_on_more_than_two_axes(tmp_path):
    # Dense on (N, T, in) becomes MatMul + Add (Gemm takes 2-D inputs only).
    model = Sequential([Dense(5, 4), Softmax(axis=1), Dense(4, 3, bias=False)], seed=0)
    path = tmp_path / "seq.onnx"
    proto = export_checked(model, path, (None, 6, 5))
    assert [node.op_type for node in proto.graph.node] == ["MatMul", "Add", "Softmax",
                                                           "MatMul"]
    assert_matches(model, path, (6, 5), (1, 2))
    pooled = Sequential([Conv2D(2, 3, 1), GlobalAvgPool()], seed=0)
    export_checked(pooled, tmp_path / "pool.onnx", (None, 2, 5, 7))
    assert_matches(pooled, tmp_path / "pool.onnx", (2, 5, 7), (1, 3))


def test_conv_dilation_and_groups_are_read_from_the_layer(tmp_path):
    model = Sequential([Conv2D(4, 8, 3, padding=2, dilation=2, groups=2)], seed=0)
    path = tmp_path / "dilated.onnx"
    proto = export_checked(model, path, (None, 4, 9, 9))
    assert_matches(model, path, (4, 9, 9), (1, 2))
    node = proto.graph.node[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes["dilations"] == [2, 2] and attributes["group"] == 2


def test_depthwise_conv_with_an_uneven_dilation_matches(tmp_path):
    model = Sequential([Conv2D(4, 8, 3, stride=(1, 2), padding=(1, 2), dilation=(1, 2),
                               groups=4), Conv2D(8, 6, 1, groups=2)], seed=0)
    path = tmp_path / "depthwise.onnx"
    proto = export_checked(model, path, (None, 4, 9, 10))
    assert_matches(model, path, (4, 9, 10), (1, 2))
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in proto.graph.node[0].attribute}
    assert attributes["dilations"] == [1, 2] and attributes["group"] == 4


NEW_LAYER_CASES = {  # name -> (model builder given the class, input shape without batch)
    "Dropout": (lambda cls: Sequential([Dense(6, 6), cls(0.5), Dense(6, 3)], seed=0), (6,)),
    "LayerNorm": (lambda cls: Sequential([Dense(6, 6), cls(6), Dense(6, 3)], seed=0), (6,)),
    "LayerNorm-plain-2d": (lambda cls: Sequential([Conv2D(2, 3, 1), cls((4, 5),
                           elementwise_affine=False)], seed=0), (2, 4, 5)),
    "AvgPool2D": (lambda cls: Sequential([Conv2D(2, 3, 3), cls(2), Flatten()], seed=0),
                  (2, 8, 8)),
    "AvgPool2D-padded": (lambda cls: Sequential([cls(3, 2, 1, count_include_pad=False),
                         cls(3, 1, 1)]), (2, 9, 8)),
    "AdaptiveAvgPool2D": (lambda cls: Sequential([Conv2D(2, 3, 1), cls(2), Flatten()],
                          seed=0), (2, 8, 8)),
    "AdaptiveAvgPool2D-1x1": (lambda cls: Sequential([cls(1)]), (2, 5, 3)),
    "AdaptiveAvgPool2D-uneven": (lambda cls: Sequential([cls((3, 2)), cls((5, 4))]),
                                 (2, 7, 5)),
}


@pytest.mark.parametrize("case", sorted(NEW_LAYER_CASES))
def test_new_layers_export_when_xpnn_has_them(tmp_path, case):
    name = case.split("-")[0]
    cls = getattr(layers, name, None)
    if cls is None:
        pytest.skip(f"xpnn.layers has no {name} yet")
    build, shape = NEW_LAYER_CASES[case]
    model = build(cls)
    path = tmp_path / f"{case}.onnx"
    export_checked(model, path, (None, *shape))
    assert_matches(model, path, shape, (1, 3))


def test_batchnorm_without_running_statistics_uses_the_batch(tmp_path):
    for affine in (True, False):
        model = Sequential([Conv2D(2, 3, 3, seed=0),
                            BatchNorm(3, affine=affine, track_running_stats=False),
                            ConvBNAct(3, 4, 3, seed=1), Flatten(), Dense(4 * 4 * 4, 5),
                            BatchNorm(5, track_running_stats=False, affine=affine)], seed=0)
        model.layers[2].bn = BatchNorm(4, track_running_stats=False, affine=affine)
        path = tmp_path / f"bn-{affine}.onnx"
        proto = export_checked(model, path, (None, 2, 6, 6))
        ops = [node.op_type for node in proto.graph.node]
        assert "BatchNormalization" not in ops and "ReduceMean" in ops
        assert_matches(model, path, (2, 6, 6), (2, 5))


def test_convbnact_without_running_statistics_exports_batch_statistics(tmp_path):
    for affine in (True, False):
        model = randomize_batchnorm(Sequential([
            ConvBNAct(2, 4, 3, seed=1, affine=affine, track_running_stats=False),
            ConvBNAct(4, 3, 1, seed=2, activation="relu", affine=affine)]))
        path = tmp_path / f"block-{affine}.onnx"
        proto = export_checked(model, path, (None, 2, 5, 5))
        ops = [node.op_type for node in proto.graph.node]
        assert ops.count("Conv") == 2 and "BatchNormalization" not in ops
        assert_matches(model, path, (2, 5, 5), (1, 4))  # 25 pixels: one image is a batch


def test_batchnorm_without_affine_exports_unit_scale_and_zero_shift(tmp_path):
    model = randomize_batchnorm(Sequential([
        Conv2D(2, 3, 3, seed=0), BatchNorm(3, affine=False), ReLU(), Flatten(),
        Dense(3 * 4 * 4, 5, seed=1), BatchNorm(5, affine=False)]))
    path = tmp_path / "bn-no-affine.onnx"
    proto = export_checked(model, path, (None, 2, 6, 6))
    assert [node.op_type for node in proto.graph.node].count("BatchNormalization") == 2
    initializers = {init.name: onnx.numpy_helper.to_array(init)
                    for init in proto.graph.initializer}
    for name, c in (("1", 3), ("5", 5)):
        np.testing.assert_array_equal(initializers[f"{name}.weight"], np.ones(c))
        np.testing.assert_array_equal(initializers[f"{name}.bias"], np.zeros(c))
    assert_matches(model, path, (2, 6, 6), (1, 3))


def test_convbnact_without_affine_folds_with_unit_scale(tmp_path):
    model = randomize_batchnorm(Sequential([ConvBNAct(2, 4, 3, seed=1, affine=False),
                                            ConvBNAct(4, 3, 3, seed=2, affine=False,
                                                      activation="relu", fold=False)]))
    path = tmp_path / "block-no-affine.onnx"
    proto = export_checked(model, path, (None, 2, 6, 6))
    assert [node.op_type for node in proto.graph.node] == ["Conv", "LeakyRelu", "Conv", "Relu"]
    assert_matches(model, path, (2, 6, 6), (1, 3))


def test_the_batch_statistics_form_against_a_reference(tmp_path):
    """The converter's form for a BatchNorm without running statistics, against NumPy."""
    rng = np.random.default_rng(0)
    for shape in ((3, 4, 5), (3,)):
        for affine in (True, False):
            bn = randomize_batchnorm(Sequential([
                BatchNorm(3, affine=affine, track_running_stats=False)]))[0]
            path = tmp_path / f"bn{len(shape)}-{affine}.onnx"
            export_checked(bn, path, (None, *shape))
            x = rng.standard_normal((4, *shape), dtype=np.float32)
            axes = (0, 2, 3) if len(shape) == 3 else (0,)
            channel = (1, 3) + (1,) * (len(shape) - 1)
            mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
            want = (x - mean) / np.sqrt(var + bn.eps)
            if affine:
                want = (want * bn.weight.value.reshape(channel)
                        + bn.bias.value.reshape(channel))
            np.testing.assert_allclose(run_onnx(path, x), want, rtol=TOLERANCE,
                                       atol=TOLERANCE)
            np.testing.assert_allclose(bn(x), want, rtol=TOLERANCE, atol=TOLERANCE)


# -- errors -------------------------------------------------------------------------------------

class Custom(Module):
    def forward(self, x, *, train=False):
        x, _ = self.prepare(x)
        return x * 2.0, None


class ReluTwice(ReLU):
    def forward(self, x, *, train=False):
        y, _ = super().forward(x, train=train)
        return y * 2.0, None


class PlainSubclass(ReLU):
    """Keeps ReLU's forward: ReLU's converter applies."""


def test_a_layer_without_converter_is_named_by_its_path(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ConfigError, match=r"cannot export 1 \(Custom\).*no ONNX converter"):
        xpnn.onnx.export(Sequential([Dense(3, 3), Custom()]), path, (None, 3))
    nested = Sequential([Residual(Sequential([Dense(3, 3), Custom()]))])
    with pytest.raises(ConfigError, match=r"0\.block\.1 \(Custom\)"):
        xpnn.onnx.export(nested, path, (None, 3))
    with pytest.raises(ConfigError, match=r"ReluTwice defines its own forward\(\)"):
        xpnn.onnx.export(Sequential([ReluTwice()]), path, (None, 3))
    assert not os.listdir(tmp_path)  # nothing written, no temporary file left


def test_a_subclass_that_keeps_forward_uses_its_base_converter(tmp_path):
    model = Sequential([Dense(3, 3), PlainSubclass()], seed=0)
    export_checked(model, tmp_path / "sub.onnx", (None, 3))
    assert_matches(model, tmp_path / "sub.onnx", (3,), (2,))


def test_register_adds_a_converter(tmp_path):
    @xpnn.onnx.register(Custom)
    def convert_custom(module, graph, x, path):
        two = graph.weight(f"{path}.two", np.array(2.0))
        return graph.node("Mul", [x, two], path=path)

    try:
        model = Sequential([Dense(3, 3), Custom()], seed=0)
        export_checked(model, tmp_path / "custom.onnx", (None, 3))
        assert_matches(model, tmp_path / "custom.onnx", (3,), (2,))
    finally:
        del xpnn.onnx.CONVERTERS[Custom]


@pytest.mark.parametrize("shape", [(None, None, 3), (0, 3), (2, -1), "3", (), (2.5, 3)])
def test_bad_input_shapes_are_refused(tmp_path, shape):
    with pytest.raises(ConfigError, match="input_shape"):
        xpnn.onnx.export(Dense(3, 2), tmp_path / "x.onnx", shape)


def test_a_shape_the_model_refuses_is_a_shape_error(tmp_path):
    with pytest.raises(ShapeError):
        xpnn.onnx.export(mnist_cnn(), tmp_path / "x.onnx", (None, 3, 28, 28))
    assert not os.listdir(tmp_path)


def test_writing_is_checked_first_and_atomic(tmp_path):
    model = Sequential([Dense(3, 2)], seed=0)
    with pytest.raises(DataError, match="folder .* does not exist"):
        xpnn.onnx.export(model, tmp_path / "missing" / "m.onnx", (None, 3))
    with pytest.raises(DataError, match=r"it is a folder.*model\.onnx"):
        xpnn.onnx.export(model, tmp_path, (None, 3))
    with pytest.raises(ConfigError):
        xpnn.onnx.export("not a model", tmp_path / "m.onnx", (None, 3))
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    xpnn.onnx.export(model, target, (None, 3))
    assert onnx.load(str(target)).producer_name == "xpnn"
    assert os.listdir(tmp_path) == ["m.onnx"]  # replaced, no temporary file left


def test_exporting_changes_nothing_in_the_model(tmp_path):
    model = randomize_batchnorm(mnist_cnn())
    before = {name: np.array(value) for name, value in model.state_dict().items()}
    xpnn.onnx.export(model, tmp_path / "m.onnx", (None, 1, 28, 28))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert all("forward" not in vars(module) for module in model.modules())


# -- the command --------------------------------------------------------------------------------

def run_command(*args):
    return subprocess.run([sys.executable, "-m", "xpnn.onnx", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_command_exports_a_saved_model(tmp_path):
    model = randomize_batchnorm(mnist_cnn(seed=1))
    source, target = tmp_path / "cnn.safetensors", tmp_path / "cnn.onnx"
    xpnn.io.save(model, source)
    result = run_command(source, target)
    assert result.returncode == 0, result.stderr
    assert "input (batch, 1, 28, 28) -> output (batch, 10)" in result.stdout
    assert_matches(model, target, (1, 28, 28), (1, 4))

    again = run_command(source, target)  # an existing target needs --force
    assert again.returncode == 1 and "--force" in again.stderr
    fixed = run_command(source, target, "--force", "--input-shape", "2,1,32,32")
    assert fixed.returncode == 0, fixed.stderr
    assert "input (2, 1, 32, 32) -> output (2, 10)" in fixed.stdout


def test_the_command_explains_bad_paths_and_missing_shapes(tmp_path):
    missing = run_command(tmp_path / "nope.safetensors", tmp_path / "x.onnx")
    assert missing.returncode == 1 and "error:" in missing.stderr
    assert "nope.safetensors" in missing.stderr and "Traceback" not in missing.stderr

    source = tmp_path / "conv.safetensors"
    xpnn.io.save(Sequential([Conv2D(3, 4, 3), GlobalAvgPool()], seed=0), source)
    no_shape = run_command(source, tmp_path / "x.onnx")
    assert no_shape.returncode == 1 and "--input-shape" in no_shape.stderr
    same = run_command(source, source, "--input-shape", "None,3,8,8")
    assert same.returncode == 1 and "other than the source" in same.stderr
    folder = run_command(source, tmp_path / "missing" / "x.onnx", "--input-shape",
                         "None,3,8,8")
    assert folder.returncode == 1 and "does not exist" in folder.stderr
    bad_shape = run_command(source, tmp_path / "x.onnx", "--input-shape", "1,three")
    assert bad_shape.returncode == 2 and "--input-shape" in bad_shape.stderr
    ok = run_command(source, tmp_path / "x.onnx", "--input-shape", "N,3,8,8")
    assert ok.returncode == 0, ok.stderr


def test_default_input_shapes():
    from xpnn.onnx.exporter import input_shape_of

    assert input_shape_of(mnist_mlp()) == (None, 1, 28, 28)
    assert input_shape_of(mnist_cnn()) == (None, 1, 28, 28)
    assert input_shape_of(darknet53(seed=0, num_classes=10)) == (None, 3, 256, 256)
    assert input_shape_of(Sequential([Dense(5, 2)])) == (None, 5)
    assert input_shape_of(Sequential([Conv2D(3, 4, 3)])) is None
