"""Architecture records: how a saved file says which model it holds, and how
:func:`load_model` rebuilds it without the model's code.

:func:`xpnn.io.save` writes, for a Module, two metadata entries:

- ``"architecture"``: ``json.dumps({"type": class name, "config": model.config()})``, where
  ``config`` holds the constructor arguments. Rebuilding looks the class up by name and
  calls ``cls(**config)``. A config value that is itself a ``{"type", "config"}`` dict, or a
  list of such dicts, is rebuilt first, recursively: that is how ``Sequential(layers=[...])``
  and ``Residual(block=...)`` come back, with no code specific to either.
- ``"preprocessing"``: when the model states the input preparation it expects as a
  ``preprocessing`` attribute (a dict: Darknet53's resize, crop, mean and std; the MNIST
  models' pixel scale), that dict as JSON. :func:`load_model` gives it back to the rebuilt
  model when its class does not compute it from the config itself.

Only classes that are known here can be built, so a file can never name arbitrary code to
run. A record read from a file is also checked for size before anything is built
(``max_values``): a forged ``Dense(10**6, 10**6)`` is refused, not allocated; and so is a
record of more than ``MAX_MODULES`` modules. A class that builds submodules or parameters
its config does not list states them with the class methods ``values_from_config(config)``
and ``modules_from_config(config)`` (see :class:`xpnn.models.Darknet53`). Known classes
are, in this order:

1. classes passed to :func:`register` (your own layers and models);
2. every :class:`~xpnn.module.Module` subclass exported by :mod:`xpnn.layers`, looked up
   when needed, so layers added to the package later are found without registering them;
3. every Module subclass exported by :mod:`xpnn.models`.

Examples
--------
>>> from xpnn.layers import Dense, ReLU, Sequential
>>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)])
>>> rebuilt = model_from_config(architecture_record(model))
>>> [type(layer).__name__ for layer in rebuilt]
['Dense', 'ReLU', 'Dense']
"""

from __future__ import annotations

import importlib
import json
import math
import os
from typing import Any

from xpnn.errors import ConfigError, WeightsError
from xpnn.io.files import fspath
from xpnn.io.reading import load, load_metadata, stored_values
from xpnn.module import Module
from xpnn.validation import is_int

__all__ = ["MAX_DEPTH", "MAX_MODULES", "architecture_record", "load_model", "lookup",
           "minimum_values", "model_from_config", "module_metadata", "read_architecture",
           "register"]

ARCHITECTURE_KEY = "architecture"
PREPROCESSING_KEY = "preprocessing"
#: Deepest nesting of module configs that is rebuilt (xpnn's own models nest 4 deep).
MAX_DEPTH = 64
#: Most modules a record may describe (Darknet53 has 241), counted before building.
MAX_MODULES = 20_000

_REGISTERED: dict[str, type[Module]] = {}
# Modules searched, in order, after the explicit registrations.
_SEARCHED = ("xpnn.layers", "xpnn.models")


# -- writing a record -------------------------------------------------------------------------


def architecture_record(model: Module) -> dict[str, Any]:
    """``{"type": class name, "config": model.config()}``: what rebuilds ``model``."""
    return {"type": type(model).__name__, "config": model.config()}


def module_metadata(model: Module) -> dict[str, str]:
    """The metadata entries :func:`xpnn.io.save` writes for ``model``: its architecture
    record, and its ``preprocessing`` dict when it has one (both as JSON).

    Examples
    --------
    >>> import json
    >>> from xpnn.layers import Dense
    >>> json.loads(module_metadata(Dense(2, 1))["architecture"])["type"]
    'Dense'
    """
    written = {ARCHITECTURE_KEY: json.dumps(architecture_record(model))}
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is None:
        return written
    try:
        text = json.dumps(preprocessing) if isinstance(preprocessing, dict) else None
    except (TypeError, ValueError):
        text = None
    if text is None:
        raise ConfigError(
            f"xpnn.io.save expected {type(model).__name__}.preprocessing to be a dict of "
            f"JSON values. Received: {preprocessing!r}"
        )
    written[PREPROCESSING_KEY] = text
    return written


# -- reading a record ---------------------------------------------------------------------------


def read_architecture(path: str | os.PathLike) -> dict | None:
    """The architecture record of a file (the parsed JSON), or ``None`` when the file has
    none (it was saved from a dict, or written by another program such as timm).

    Raises
    ------
    WeightsError
        The record is not valid JSON.
    """
    path = fspath("xpnn.io.read_architecture", path)
    return _parse_record(path, load_metadata(path))


def _parse_record(path: str, metadata: dict[str, str]):
    if ARCHITECTURE_KEY not in metadata:
        return None
    try:
        return json.loads(metadata[ARCHITECTURE_KEY])
    except (ValueError, RecursionError) as error:
        raise WeightsError(
            f"{path!r} has an unreadable architecture record (not JSON: {error}). "
            f"Build the model in code and use xpnn.io.load(path, into=model)."
        ) from error


def load_model(path: str | os.PathLike) -> Module:
    """Rebuild the model recorded in a file saved by :func:`xpnn.io.save` and load its
    weights.

    Classes are found by name (xpnn's own layers and models, or yours after
    ``xpnn.io.register(YourLayer)``). An architecture that needs more values than the file
    stores is refused before anything is built, so a forged header cannot make xpnn
    allocate a huge model.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from xpnn.io import save
    >>> from xpnn.layers import Dense, ReLU, Sequential
    >>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save(model, path)
    >>> copy = load_model(path)
    >>> x = np.ones((1, 4), dtype="float32")
    >>> bool((copy(x) == model(x)).all())
    True
    """
    path = fspath("xpnn.io.load_model", path)
    metadata = load_metadata(path)
    record = _parse_record(path, metadata)
    if record is None:
        raise WeightsError(
            f"{path!r} records no architecture (it was saved from a dict, or by another "
            f"program). Build the model in code and use xpnn.io.load({path!r}, into=model)."
        )
    model = model_from_config(record, max_values=stored_values(path))
    load(path, into=model)
    _restore_preprocessing(model, metadata)
    return model


def _restore_preprocessing(model: Module, metadata: dict[str, str]) -> None:
    """Give the model the preprocessing its file records, unless its class computes one
    from the config. A value that is not a JSON object was written by a user under the
    same name (the key is only reserved for models that have a preprocessing): skip it."""
    if getattr(model, "preprocessing", None) is not None or PREPROCESSING_KEY not in metadata:
        return
    try:
        value = json.loads(metadata[PREPROCESSING_KEY])
    except (ValueError, RecursionError):
        return
    if isinstance(value, dict):
        model.preprocessing = value


# -- known classes ------------------------------------------------------------------------------


def register(cls: type[Module] | None = None, *, name: str | None = None):
    """Make a Module subclass buildable from a saved record under ``name`` (default: the
    class name). Usable as a decorator, with or without arguments; returns the class.

    Examples
    --------
    >>> from xpnn.module import Module
    >>> @register
    ... class Twice(Module):
    ...     def forward(self, x, *, train=False):
    ...         return 2.0 * x, lambda dy: 2.0 * dy
    >>> lookup("Twice") is Twice
    True
    """

    def add(klass):
        if not (isinstance(klass, type) and issubclass(klass, Module)):
            raise ConfigError(f"register expected a Module subclass. Received: {klass!r}")
        _REGISTERED[name or klass.__name__] = klass
        return klass

    return add if cls is None else add(cls)


def lookup(type_name: str) -> type[Module] | None:
    """The Module class registered or exported under ``type_name``, or ``None``."""
    if not isinstance(type_name, str) or not type_name.isidentifier():
        return None
    if type_name in _REGISTERED:
        return _REGISTERED[type_name]
    if type_name.startswith("_"):
        return None
    for module_name in _SEARCHED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found = getattr(module, type_name, None)
        if isinstance(found, type) and issubclass(found, Module) and found is not Module:
            return found
    return None


# -- building -------------------------------------------------------------------------------------


def model_from_config(cfg: dict[str, Any], *, max_values: int | None = None) -> Module:
    """Build the module described by ``{"type": class name, "config": {argument: value}}``.

    Nested ``{"type", "config"}`` dicts (and lists of them) among the arguments are built
    first. The parameters of the result are freshly initialized: load weights into it with
    ``xpnn.io.load(path, into=model)``.

    Parameters
    ----------
    cfg : dict
    max_values : int, optional
        Refuse, before building anything, a config whose parameters and buffers would hold
        more than this many values (:func:`load_model` passes the number of values the
        file stores). The count is a lower bound computed from the arguments
        (``in_features * out_features``, ``in_channels * out_channels * kh * kw``,
        ``num_features``, or a class's own ``values_from_config(config)``).

    Raises
    ------
    WeightsError
        When the config is malformed or nested more than ``MAX_DEPTH`` deep, names a class
        that is not known, describes more than ``MAX_MODULES`` modules (counted from the
        config, with a class's own ``modules_from_config(config)``), needs more than
        ``max_values`` values, or its arguments are not accepted by the class (including a
        class's ``values_from_config``).
    """
    needed, modules = _counts(cfg)
    if modules > MAX_MODULES:
        raise WeightsError(
            f"Cannot rebuild a model: expected an architecture of at most {MAX_MODULES:,} "
            f"modules. Received: a record of {modules:,}. The architecture record is "
            f"corrupt or forged; build the model in code and use "
            f"xpnn.io.load(path, into=model)."
        )
    if max_values is not None and needed > max_values:
        raise WeightsError(
            f"Cannot rebuild a model: its recorded architecture needs at least "
            f"{needed:,} values, but the file stores only {max_values:,}. The "
            f"architecture record is corrupt or forged; build the model in code and "
            f"use xpnn.io.load(path, into=model)."
        )
    return _build(cfg, depth=0)


def _build(cfg, depth: int) -> Module:
    if not _is_module_config(cfg):
        raise WeightsError(
            f"Cannot rebuild a model from this config: expected a dict with keys 'type' "
            f"(a class name) and 'config' (a dict of arguments). Received: {_short(cfg)}"
        )
    if depth > MAX_DEPTH:
        raise WeightsError(
            f"Cannot rebuild a model nested more than {MAX_DEPTH} modules deep. The "
            f"architecture record is corrupt or forged; build the model in code."
        )
    type_name, arguments = cfg["type"], cfg["config"]
    cls = lookup(type_name)
    if cls is None:
        raise WeightsError(
            f"Cannot rebuild a model: unknown layer type {type_name!r}. It is neither "
            f"registered with xpnn.io.register nor exported by xpnn.layers or xpnn.models. "
            f"The file may come from a newer xpnn (upgrade xpnn) or use a custom layer "
            f"(import it and call xpnn.io.register(YourLayer) first)."
        )
    kwargs = {key: _rebuild(value, depth) for key, value in arguments.items()}
    try:
        return cls(**kwargs)
    except WeightsError:
        raise
    except Exception as error:
        raise WeightsError(
            f"Cannot rebuild {type_name} from its recorded config {_short(arguments)}: "
            f"{type(error).__name__}: {error}. The file may come from another xpnn version."
        ) from error


def _rebuild(value, depth: int):
    if _is_module_config(value):
        return _build(value, depth + 1)
    if isinstance(value, list) and value and all(_is_module_config(item) for item in value):
        return [_build(item, depth + 1) for item in value]
    return value


def minimum_values(cfg) -> int:
    """A lower bound of the number of values (parameters and buffers) of the module tree
    described by ``cfg``, computed from its arguments without building anything.

    Raises
    ------
    WeightsError
        A class's ``values_from_config`` refuses its arguments.

    Examples
    --------
    >>> minimum_values({"type": "Dense", "config": {"in_features": 784, "out_features": 10}})
    7840
    """
    return _counts(cfg)[0]


def _counts(cfg) -> tuple[int, int]:
    """``(values, modules)`` of the module tree ``cfg`` describes, from its arguments."""
    total, modules, stack = 0, 0, [(cfg, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            continue  # _build refuses it
        if isinstance(item, list):
            stack.extend((value, depth) for value in item)
            continue
        if not _is_module_config(item):
            continue
        arguments, cls = item["config"], lookup(item["type"])
        total += _own_values(cls, item["type"], arguments)
        modules += _own_modules(cls, item["type"], arguments)
        stack.extend((value, depth + 1) for value in arguments.values()
                     if isinstance(value, dict | list))
    return total, modules


def _from_class(cls, hook: str, type_name: str, arguments: dict) -> int | None:
    """A class's own count from its config (``hook``), or None when it has none. A config
    the hook refuses is refused here, before anything is built."""
    own = getattr(cls, hook, None)
    if own is None:
        return None
    try:
        return max(0, int(own(arguments)))
    except Exception as error:
        raise WeightsError(
            f"Cannot rebuild {type_name} from its recorded config {_short(arguments)}: "
            f"{type(error).__name__}: {error}. The architecture record is corrupt or "
            f"forged, or comes from another xpnn version."
        ) from error


def _own_modules(cls, type_name: str, arguments: dict) -> int:
    own = _from_class(cls, "modules_from_config", type_name, arguments)
    return 1 if own is None else max(own, 1)


def _own_values(cls, type_name: str, arguments: dict) -> int:
    own = _from_class(cls, "values_from_config", type_name, arguments)
    if own is not None:
        return own
    ins = _size(arguments.get("in_features"))
    outs = _size(arguments.get("out_features"))
    count = ins * outs
    in_channels = _size(arguments.get("in_channels"))
    out_channels = _size(arguments.get("out_channels"))
    if in_channels and out_channels:
        kernel = arguments.get("kernel_size", 1)
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        area = math.prod(_size(k) for k in kernel) if isinstance(kernel, list | tuple) else 1
        count += in_channels * out_channels * max(area, 1)
    return count + _size(arguments.get("num_features"))


def _size(value) -> int:
    """``value`` if it is a positive int, else 0 (the constructor reports bad values)."""
    return int(value) if is_int(value, 1) else 0


def _is_module_config(value) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"type", "config"}
        and isinstance(value["type"], str)
        and isinstance(value["config"], dict)
    )


def _short(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
