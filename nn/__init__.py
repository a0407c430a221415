"""backprop-service's engine: neural networks (dense, CNN, RNN/LSTM, Transformer) trained by
backpropagation in NumPy (the dense engine's per-sample kernel compiled with numba).

The public API (docs/engine-api.md) is what this module re-exports; nothing else is public.
"""
from . import budget
from .checkpoint import position as checkpoint_position
from .data import DataInfo, describe
from .errors import SpecError
from .generators import generate, generator_shapes
from .model import Model, model_meta
from .network import Weights
from .spec import DEFAULTS, Plan, build
from .train import EpochReport, Snapshot, TrainResult, snapshot, train
from .weights import weights_from_json, weights_to_json

__all__ = ["DEFAULTS", "DataInfo", "EpochReport", "Model", "Plan", "Snapshot", "SpecError",
           "TrainResult", "Weights", "budget", "build", "checkpoint_position", "describe",
           "generate", "generator_shapes", "model_meta", "snapshot", "train",
           "weights_from_json", "weights_to_json"]
