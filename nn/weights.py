"""Weights as JSON ({"layers": [{"W": [[...]], "b": [...]}, {}, ...]}) and shape checks.

A dense layer's W has shape (inputs, units) and b (units,), so that out = f(x @ W + b);
every other layer names its own arrays (its module's docstring; docs/engine-api.md lists
them), and layers without parameters have none ({}). Arrays of more than two axes (a
conv2d W) are nested lists.
"""
import numpy as np

from .errors import SpecError
from .layers import Layer
from .network import Weights


def weights_to_json(weights: Weights) -> dict:
    return {"layers": [{k: v.tolist() for k, v in p.items()} for p in weights]}


def check_weights(weights, layers: list[Layer] | tuple, path: str, dtype) -> Weights:
    """Arrays (or nested lists) per layer -> Weights in dtype; SpecError for a bad key or shape."""
    if not isinstance(weights, (list, tuple)) or len(weights) != len(layers):
        raise SpecError(path, f"must be a list of {len(layers)} layer objects")
    out: Weights = []
    for i, (p, layer) in enumerate(zip(weights, layers)):
        lp = f"{path}[{i}]"
        shapes = layer.param_shapes()
        if not isinstance(p, dict) or set(p) != set(shapes):
            keys = ", ".join(shapes) or "no arrays ({})"
            raise SpecError(lp, f"a {layer.kind} layer has {keys}")
        arrays = {}
        for key, shape in shapes.items():
            try:
                a = np.asarray(p[key])
            except (ValueError, TypeError):
                a = np.asarray(None)
            if a.dtype.kind not in "iuf":                   # no bools, strings, ragged lists
                raise SpecError(f"{lp}.{key}", "must be a rectangular array of numbers")
            if a.shape != shape:
                raise SpecError(f"{lp}.{key}", f"must have shape {shape}, got {a.shape}")
            if not np.isfinite(a).all():
                raise SpecError(f"{lp}.{key}", "contains NaN or infinite values")
            arrays[key] = a.astype(dtype)          # (a copy: the caller's arrays stay theirs)
        out.append(arrays)
    return out


def weights_from_json(obj, plan, path: str = "initial_weights") -> Weights:
    """{"layers": [...]} -> Weights for plan; SpecError("initial_weights.layers[0].W", ...)."""
    if not isinstance(obj, dict) or set(obj) != {"layers"}:
        raise SpecError(path, 'must be an object {"layers": [...]}')
    return check_weights(obj["layers"], plan.layers, f"{path}.layers", plan.training["dtype"])

