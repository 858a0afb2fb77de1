""":func:`export`: an xpnn model to an ONNX file, built from the layer graph (no tracing).

The model is first run once in inference mode on zeros of ``input_shape``
(:func:`xpnn.summary.trace`), which checks that it accepts that shape and gives every
layer's input and output shapes. Then each layer's converter (:mod:`xpnn.onnx.registry`,
:mod:`xpnn.onnx.converters`) adds its nodes, from the model down, parameters becoming
initializers. The graph is checked with ``onnx.checker.check_model(full_check=True)``
and written atomically (:func:`xpnn.io.writing.write_atomically`).
"""

from __future__ import annotations

import json
import os

import numpy as np

import xpnn
from xpnn import backends
from xpnn.errors import ConfigError
from xpnn.io.files import fspath
from xpnn.io.writing import check_writable, write_atomically
from xpnn.layers.conv import Conv2D
from xpnn.layers.dense import Dense
from xpnn.module import Module
from xpnn.onnx import converters  # noqa: F401  (registers the converters)
from xpnn.onnx.registry import converter_for
from xpnn.summary import check_input_shape, trace
from xpnn.validation import float_dtype, integer

__all__ = ["INPUT_NAME", "IR_VERSION", "OPSET", "OUTPUT_NAME", "GraphBuilder", "export",
           "input_shape_of", "require_onnx"]

#: The ONNX operator set the graphs use (LayerNormalization needs 17), and the IR version
#: that goes with it, so that runtimes from 2022 on (onnxruntime >= 1.12) read the files.
OPSET = 17
IR_VERSION = 8
INPUT_NAME, OUTPUT_NAME = "input", "output"
BATCH_AXIS = "batch"


def require_onnx():
    """The ``onnx`` package, or an ImportError that says how to install it."""
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "xpnn.onnx.export needs the onnx package. Install it with "
            "`pip install onnx` (or `pip install xpnn[onnx]`)."
        ) from error
    return onnx


class GraphBuilder:
    """The ONNX graph under construction: nodes, initializers, and the traced shapes.

    Converters call :meth:`node`, :meth:`weight` and :meth:`convert`; the shapes the model
    produced on the trace are in :meth:`input_shape` / :meth:`output_shape` (batch 1 when
    the exported batch is dynamic).
    """

    def __init__(self, onnx, dtype, calls):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.nodes = []
        self.initializers = []
        self._names: set[str] = set()
        self._shapes = {}
        for call in calls:
            self._shapes.setdefault(id(call.module), (call.input_shape, call.output_shape))

    def unique(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``, ... if it is taken."""
        candidate, count = name, 0
        while candidate in self._names:
            count += 1
            candidate = f"{name}_{count}"
        self._names.add(candidate)
        return candidate

    def node(self, op: str, inputs: list[str], *, path: str, **attributes) -> str:
        """Add a node ``op(inputs)`` with ``attributes``; return its output's name
        (``"{path}/{op}"``, made unique)."""
        output = self.unique(f"{path}/{op}" if path else op)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=output,
                                                     **attributes))
        return output

    def weight(self, name: str, array, *, cast: bool = True) -> str:
        """Add an initializer holding ``array`` (an array of any backend; floating-point
        values in the model's dtype unless ``cast=False``); return its name."""
        host = np.asarray(backends.to_numpy(array))
        if cast:
            host = host.astype(self.dtype)
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(
            np.ascontiguousarray(host), name))
        return name

    def convert(self, module: Module, x: str, path: str) -> str:
        """The output tensor of ``module`` applied to the tensor ``x``: its converter's
        nodes (a ConfigError naming ``path`` if it has none)."""
        return converter_for(module, path)(module, self, x, path)

    def input_shape(self, module: Module):
        """The shape of ``module``'s input on the trace, or None if it was not called."""
        return self._shapes.get(id(module), (None, None))[0]

    def output_shape(self, module: Module):
        """The shape of ``module``'s output on the trace, or None if it was not called."""
        return self._shapes.get(id(module), (None, None))[1]

    def rename(self, old: str, new: str) -> None:
        """Give the tensor ``old`` the name ``new`` everywhere."""
        for node in self.nodes:
            for names in (node.input, node.output):
                for index, name in enumerate(names):
                    if name == old:
                        names[index] = new


def export(model: Module, path: str | os.PathLike, input_shape, *, opset: int = OPSET,
           dtype: str | None = None, check: bool = True):
    """Write ``model`` as an ONNX file computing its inference output.

    Parameters
    ----------
    model : Module
        Built from layers that have a converter (see :mod:`xpnn.onnx`); BatchNorm uses its
        running statistics (without them, the batch's statistics), as ``model(x)`` does.
    path : str or os.PathLike
        The ``.onnx`` file to write (atomically: a crash leaves the old file or the new).
    input_shape : tuple
        The input's shape, batch size first; a batch size of None exports a dynamic batch
        axis named ``"batch"``, e.g. ``(None, 1, 28, 28)``. The model runs once on zeros of
        this shape (batch 1 for None) to check it and to learn every layer's shapes.
    opset : int
        The ONNX operator set (default :data:`OPSET`, 17; at least 17).
    dtype : str, optional
        ``"float32"`` or ``"float64"``: the graph's input, output and weights (default the
        model's parameter dtype). onnxruntime's CPU convolution runs float32 only, so
        export a float64 convolutional model with ``dtype="float32"``.
    check : bool
        Run ``onnx.checker.check_model(full_check=True)`` before writing (default True).

    Returns
    -------
    onnx.ModelProto
        The model written. Its input is named ``"input"``, its output ``"output"``.

    Raises
    ------
    ConfigError
        A layer without a converter (the message names its path in the model, e.g.
        ``"3 (MyLayer)"``), or a bad ``input_shape``.
    ShapeError
        The model does not accept ``input_shape``.
    DataError
        The file cannot be written (missing folder, a folder as ``path``, disk full).
    ImportError
        The ``onnx`` package is not installed.

    Examples
    --------
    >>> import os, tempfile
    >>> from xpnn.layers import Dense, ReLU, Sequential
    >>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.onnx")
    >>> try:
    ...     proto = export(model, path, (None, 4))
    ... except ImportError:  # onnx not installed: nothing to show
    ...     ops = ["Gemm", "Relu", "Gemm"]
    ... else:
    ...     ops = [node.op_type for node in proto.graph.node]
    >>> ops
    ['Gemm', 'Relu', 'Gemm']
    """
    if not isinstance(model, Module):
        raise ConfigError(
            f"xpnn.onnx.export expected an xpnn Module. Received: {type(model).__name__}"
        )
    path = fspath("xpnn.onnx.export", path)
    shape = check_input_shape("xpnn.onnx.export", input_shape)
    opset = integer("xpnn.onnx.export", "opset", opset, low=OPSET)
    onnx = require_onnx()
    check_writable(path, "the ONNX model", ".onnx")  # before the model runs
    calls = trace(model, shape)  # checks the shape; every layer's shapes
    if dtype is None:
        parameters = model.parameters()
        dtype = backends.dtype_name(parameters[0].dtype) if parameters else "float32"
    else:
        dtype = float_dtype("xpnn.onnx.export", dtype)

    graph = GraphBuilder(onnx, dtype, calls)
    graph.unique(INPUT_NAME)
    output = graph.convert(model, INPUT_NAME, "")
    if output == INPUT_NAME:  # a model that passes its input through
        output = graph.node("Identity", [INPUT_NAME], path="")
    graph.rename(output, OUTPUT_NAME)

    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dynamic = shape[0] is None
    out_shape = list(calls[0].output_shape)
    if dynamic and out_shape:
        out_shape[0] = BATCH_AXIS
    in_shape = [BATCH_AXIS if size is None else size for size in shape]
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes, type(model).__name__,
            [onnx.helper.make_tensor_value_info(INPUT_NAME, elem_type, in_shape)],
            [onnx.helper.make_tensor_value_info(OUTPUT_NAME, elem_type, out_shape)],
            initializer=graph.initializers,
        ),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="xpnn", producer_version=xpnn.__version__,
        ir_version=IR_VERSION, doc_string=model.describe(),
    )
    preprocessing = getattr(model, "preprocessing", None)
    if isinstance(preprocessing, dict):
        onnx.helper.set_model_props(proto, {"preprocessing": json.dumps(preprocessing)})
    if check:
        onnx.checker.check_model(proto, full_check=True)
    write_atomically(path, proto.SerializeToString(), what="the ONNX model")
    return proto


def input_shape_of(model: Module):
    """The input shape ``model`` expects, with a dynamic batch, when it can be told from
    the model; else None.

    - a ``preprocessing`` with an ``input_size`` (Darknet53): ``(None, C, size, size)``
      with C the first convolution's input channels;
    - the MNIST models' preprocessing (:data:`xpnn.models.mnist.PREPROCESSING`):
      ``(None, 1, 28, 28)``;
    - otherwise a model whose first layer with weights is Dense: ``(None, in_features)``.

    Examples
    --------
    >>> from xpnn.models import darknet53, mnist_mlp
    >>> input_shape_of(mnist_mlp()), input_shape_of(darknet53(seed=0))
    ((None, 1, 28, 28), (None, 3, 256, 256))
    """
    from xpnn.models.mnist import PREPROCESSING as MNIST

    first = next((module for module in model.modules() if isinstance(module, Conv2D | Dense)),
                 None)
    preprocessing = getattr(model, "preprocessing", None)
    if isinstance(preprocessing, dict):
        size = preprocessing.get("input_size")
        if isinstance(size, int) and isinstance(first, Conv2D):
            return (None, first.in_channels, size, size)
        if preprocessing == MNIST and (
                (isinstance(first, Conv2D) and first.in_channels == 1)
                or (isinstance(first, Dense) and first.in_features == 28 * 28)):
            return (None, 1, 28, 28)
    if isinstance(first, Dense):
        return (None, first.in_features)
    return None
