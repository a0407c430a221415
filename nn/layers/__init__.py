"""Layers: one module per layer type, each with forward -> (out, cache) and
backward -> (dx, grads), and a Layer class (nn/layers/base.py) that the registry below maps
its spec "type" to. Adding a layer type is adding a module and a line here.
"""
from .avgpool2d import AvgPool2D
from .base import Cost, Layer
from .conv2d import Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .flatten import Flatten
from .layer_norm import LayerNorm
from .lstm import LSTM
from .maxpool2d import MaxPool2D
from .positional_encoding import PositionalEncoding
from .rnn import RNN
from .self_attention import SelfAttention
from .sequence_pool import SequencePool
from .transformer_decoder import TransformerDecoder
from .transformer_encoder import TransformerEncoder

LAYERS: dict[str, type[Layer]] = {cls.kind: cls for cls in (
    Dense, Dropout, Conv2D, MaxPool2D, AvgPool2D, Flatten, RNN, LSTM, Embedding, SequencePool,
    SelfAttention, LayerNorm, PositionalEncoding, TransformerEncoder,
    TransformerDecoder)}

__all__ = ["LAYERS", "Cost", "Layer"]
