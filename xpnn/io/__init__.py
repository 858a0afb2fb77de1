"""Saving and loading models as safetensors files (``xpnn.io``).

safetensors holds named arrays and a ``str -> str`` metadata header, and loading it never
runs code (unlike pickle). One route saves and rebuilds every model::

    xpnn.io.save(model, path, metadata={...})   # state + architecture record (+ preprocessing)
    model = xpnn.io.load_model(path)            # rebuilt from the record, weights loaded
    xpnn.io.load(path, into=model)              # weights into a model built in code

- :mod:`xpnn.io.writing`: :func:`save` (atomic) and the header it writes (``format``,
  ``format_version``, ``xpnn_version``, then the user's ``metadata``);
- :mod:`xpnn.io.reading`: :func:`load`, :func:`load_metadata`, :func:`read_arrays`,
  :func:`stored_values`, which check the file before trusting it;
- :mod:`xpnn.io.records`: the ``architecture`` and ``preprocessing`` metadata of a saved
  Module, :func:`load_model`, and :func:`register` for your own layers;
- :mod:`xpnn.io.darknet`: darknet's binary ``.weights`` files (read for conversion);
- :mod:`xpnn.io.files`: path arguments, opening regular files only (a FIFO is refused,
  not waited on), and size-checked binary payloads read without memory maps.

A file without an xpnn record (timm's Darknet53 weights) is loaded by its model's own
adapter, e.g. :func:`xpnn.models.darknet53`.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> from xpnn.layers import Dense, ReLU, Sequential
>>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> save(model, path, metadata={"trained_on": "nothing"})
>>> load_metadata(path)["trained_on"]
'nothing'
>>> copy = load_model(path)
>>> x = np.ones((1, 4), dtype="float32")
>>> bool((copy(x) == model(x)).all())
True
"""

from xpnn.errors import MissingFileError
from xpnn.io.reading import MAX_HEADER_BYTES, load, load_metadata, read_arrays, stored_values
from xpnn.io.records import (
    load_model,
    lookup,
    minimum_values,
    model_from_config,
    read_architecture,
    register,
)
from xpnn.io.writing import FORMAT, FORMAT_VERSION, RESERVED_KEYS, SAVABLE_DTYPES, save

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "RESERVED_KEYS",
    "SAVABLE_DTYPES",
    "MissingFileError",
    "load",
    "load_metadata",
    "load_model",
    "lookup",
    "minimum_values",
    "model_from_config",
    "read_architecture",
    "read_arrays",
    "register",
    "save",
    "stored_values",
]
