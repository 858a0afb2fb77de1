"""Export xpnn models to ONNX (``xpnn.onnx``), from the layer graph rather than by tracing.

    xpnn.onnx.export(model, "model.onnx", (None, 1, 28, 28))   # None: dynamic batch axis
    python -m xpnn.onnx model.safetensors model.onnx [--input-shape None,1,28,28]

Needs the ``onnx`` package (``pip install onnx``; onnxruntime runs the result). Every layer
of the model needs a converter (:mod:`xpnn.onnx.converters` lists them: Dense, Conv2D,
BatchNorm, ConvBNAct, the activations, pooling, Flatten, the containers and residual
blocks, Darknet53 and the MNIST models); a layer without one is a ConfigError naming its
path in the model. :func:`register` adds a converter for a layer of your own.

The graph computes the model's inference output (BatchNorm with its running statistics,
or the batch's own for one built with ``track_running_stats=False``), in the model's
dtype, with opset :data:`OPSET`; its input is named ``"input"`` and its output
``"output"``, and the model's ``preprocessing`` (if any) is stored as JSON in the file's
metadata (``metadata_props["preprocessing"]``).

Examples
--------
>>> import os, tempfile
>>> from xpnn.models import mnist_cnn
>>> path = os.path.join(tempfile.mkdtemp(), "cnn.onnx")
>>> try:
...     proto = export(mnist_cnn(), path, (None, 1, 28, 28))
... except ImportError:  # onnx not installed
...     dims = ["batch", 10]
... else:
...     shape = proto.graph.output[0].type.tensor_type.shape
...     dims = [dim.dim_param or dim.dim_value for dim in shape.dim]
>>> dims
['batch', 10]
"""

from xpnn.onnx.exporter import INPUT_NAME, OPSET, OUTPUT_NAME, GraphBuilder, export
from xpnn.onnx.registry import CONVERTERS, converter_for, register

__all__ = ["CONVERTERS", "INPUT_NAME", "OPSET", "OUTPUT_NAME", "GraphBuilder",
           "converter_for", "export", "register"]
