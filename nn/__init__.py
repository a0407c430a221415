"""backprop-service's engine: feed-forward networks trained by backpropagation in pure NumPy.

The public API (docs/engine-api.md) is what this module re-exports; nothing else is public.
"""
from .data import DataInfo, describe
from .errors import SpecError
from .model import Model, model_meta
from .network import Weights
from .playground import generate
from .spec import DEFAULTS, Plan, build
from .train import EpochReport, TrainResult, train
from .weights import weights_from_json, weights_to_json

__all__ = ["DEFAULTS", "DataInfo", "EpochReport", "Model", "Plan", "SpecError", "TrainResult",
           "Weights", "build", "describe", "generate", "model_meta", "train", "weights_from_json",
           "weights_to_json"]
