"""Decoding a seq2seq model (Model.decode): the encoder runs once per input, then the decoder
one position at a time from BOS, each transformer_decoder keeping its self-attention keys
and values and the encoder output's cross-attention keys and values between steps (its
step()), until every sequence has produced EOS or max_length tokens.

Greedy takes the most probable token at each step (PAD and BOS, which no target holds before
its EOS, are never chosen); beam search (beam_size k) keeps the k
sequences of highest total log-probability, a finished one (EOS) carried on unchanged. A
sequence's score is its total log-probability (EOS's included when it ended); outputs leave
out BOS, EOS and PAD. With attention, each sample's cross-attention weights: (layer, head,
target step, source position), a step per output token and one for EOS when produced, the
source positions of its real tokens.
"""
import math

import numpy as np

from . import seq2seq
from .activations import log_softmax
from .errors import SpecError
from .seq2seq import BOS, EOS, PAD

MAX_BEAM = 64


def _sources(inputs, T_src: int, vocab: int) -> np.ndarray:
    """A list of id lists of different lengths -> (N, T_src) int64, right-padded with PAD."""
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise SpecError("inputs", "must be a non-empty list of token id lists")
    x = np.full((len(inputs), T_src), PAD, np.int64)
    for i, row in enumerate(inputs):
        p = f"inputs[{i}]"
        if not isinstance(row, (list, tuple)) or not row:
            raise SpecError(p, "must be a non-empty list of token ids")
        if len(row) > T_src:
            raise SpecError(p, f"has {len(row)} tokens; the model reads at most {T_src}")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   and 0 <= v < vocab for v in row):
            raise SpecError(p, f"token ids must be integers in [0, {vocab})")
        x[i, :len(row)] = row
    return seq2seq.check_sources(x)


def _count(value, path: str, default: int, hi: int | None = None) -> int:
    """An integer >= 1 (at most hi when given), or default for None."""
    if value is None:
        return default
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1 \
            or hi is not None and value > hi:
        raise SpecError(path, "must be an integer >= 1" + (f" and <= {hi}" if hi else ""))
    return int(value)


class Decoder:
    """One model's decoder, run a position at a time over a batch of rows."""

    def __init__(self, model) -> None:
        self.n_enc = model.encoder_layers
        self.layers, self.params = model.layers, model.weights
        self.dtype = np.dtype(model.meta["dtype"])
        self.dec = list(zip(self.layers[self.n_enc:], self.params[self.n_enc:]))
        self.blocks = [i for i, (l, _) in enumerate(self.dec) if l.takes_memory]

    def encode(self, src: np.ndarray) -> np.ndarray:
        """(N, T_src) ids -> the encoder's output (N, T_src, D), computed once."""
        mask = src != PAD
        h = src
        for layer, p in zip(self.layers[:self.n_enc], self.params[:self.n_enc]):
            h = seq2seq.layer_forward(layer, h, p, train=False, mask=mask)[0]
        return h

    def step(self, ids: np.ndarray, t: int, memory: np.ndarray, src_mask: np.ndarray,
             states: list) -> tuple[np.ndarray, list, list]:
        """ids (R,) the tokens at position t -> (log-probabilities (R, V), states, the
        cross-attention weights of each block (R, heads, T_src))."""
        weights = []
        h = None
        for j, (layer, p) in enumerate(self.dec):
            if layer.kind == "embedding":
                h = p["E"][ids]
            elif layer.kind == "positional_encoding":
                h = h + (p["P"][t] if layer.learned else layer.table[t].astype(h.dtype))
            elif layer.takes_memory:
                k = self.blocks.index(j)
                h, states[k], w = layer.step(h, p, states[k], memory, src_mask)
                weights.append(w)
            elif j == len(self.dec) - 1:                      # the output layer: its z
                h = layer.forward(h, p, train=False)[1].z
            else:
                h = layer.forward(h, p, train=False)[0]
        logp = log_softmax(h)
        logp[:, [PAD, BOS]] = -np.inf          # never a target before EOS: never chosen
        return logp, states, weights


def _take(state, idx: np.ndarray):
    """A decoder block's state with its rows (axis 0) in the order idx (beams reordered)."""
    if state is None or isinstance(state, (int, float, str)):
        return state
    if isinstance(state, np.ndarray):
        return state[idx] if state.ndim else state
    if isinstance(state, dict):
        return {k: _take(v, idx) for k, v in state.items()}
    if hasattr(state, "_make"):                               # a NamedTuple
        return state._make(_take(v, idx) for v in state)
    return type(state)(_take(v, idx) for v in state)


def _greedy(dec: Decoder, src: np.ndarray, steps: int, attention: bool):
    n = len(src)
    memory, src_mask = dec.encode(src), src != PAD
    states = [None] * len(dec.blocks)
    ids = np.full(n, BOS, np.int64)
    done = np.zeros(n, bool)
    scores = np.zeros(n)
    out = np.full((n, steps), PAD, np.int64)
    att = []
    for t in range(steps):
        logp, states, w = dec.step(ids, t, memory, src_mask, states)
        ids = logp.argmax(axis=-1)
        scores += np.where(done, 0.0, logp[np.arange(n), ids])
        ids = np.where(done, PAD, ids)
        out[:, t] = ids
        if attention:
            att.append(np.stack(w, axis=1))                   # (N, layers, heads, T_src)
        done |= ids == EOS
        if done.all():
            break
    return out, scores, att


def _beam(dec: Decoder, src: np.ndarray, steps: int, k: int, attention: bool):
    n = len(src)
    rows = np.repeat(np.arange(n), k)                         # beam r of input i: i * k + r
    memory, src_mask = dec.encode(src)[rows], (src != PAD)[rows]
    states = [None] * len(dec.blocks)
    ids = np.full(n * k, BOS, np.int64)
    done = np.zeros(n * k, bool)
    scores = np.tile(np.r_[0.0, np.full(k - 1, -np.inf)], n)  # one live beam to start
    out = np.zeros((n * k, 0), np.int64)
    att = np.zeros((n * k, 0), dec.dtype)
    for t in range(steps):
        logp, states, w = dec.step(ids, t, memory, src_mask, states)
        V = logp.shape[1]
        # a finished beam has one continuation, PAD, at no cost
        logp[done] = -np.inf
        logp[done, PAD] = 0.0
        cand = (scores[:, None] + logp).reshape(n, k * V)
        best = np.argsort(-cand, axis=1, kind="stable")[:, :k]
        src_beam = (np.arange(n)[:, None] * k + best // V).ravel()
        ids = (best % V).ravel()
        scores = cand[np.arange(n)[:, None], best].ravel()
        out = np.concatenate([out[src_beam], ids[:, None]], axis=1)
        if attention:
            a = np.stack(w, axis=1)[src_beam][:, None]        # (R, 1, layers, heads, T_src)
            att = a if t == 0 else np.concatenate([att[src_beam], a], axis=1)
        done = done[src_beam] | (ids == EOS)
        states = [_take(s, src_beam) for s in states]
        if done.all():
            break
    pick = np.arange(n) * k + scores.reshape(n, k).argmax(axis=1)
    return out[pick], scores[pick], (list(att[pick].transpose(1, 0, 2, 3, 4))
                                      if attention else [])


def decode(model, inputs, max_length: int | None = None, beam_size: int = 1,
           attention: bool = False, batch_size: int | None = None) -> dict:
    """Model.decode: see the module docstring."""
    if model.encoder_layers == 0:
        raise SpecError("inputs", "decode is for seq2seq models (an encoder-decoder network); "
                                  "use predict")
    T_src = model.layers[0].in_shape[0]
    T_tgt = model.layers[model.encoder_layers].in_shape[0]
    src = _sources(inputs, T_src, model.layers[0].spec["vocab_size"])
    # the decoder has positions for T_tgt tokens (its positional encoding's length): longer
    # requests stop there
    steps = min(_count(max_length, "max_length", T_tgt), T_tgt)
    k = _count(beam_size, "beam_size", 1, MAX_BEAM)
    rows = _count(batch_size, "batch_size", len(src))
    dec = Decoder(model)
    outputs, scores, attn = [], [], []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for s in range(0, len(src), rows):
            part = src[s:s + rows]
            out, sc, att = (_greedy(dec, part, steps, attention) if k == 1 else
                            _beam(dec, part, steps, k, attention))
            for i, row in enumerate(out):
                ended = np.flatnonzero(row == EOS)
                length = int(ended[0]) if len(ended) else len(row)
                outputs.append([int(v) for v in row[:length]])
                scores.append(float(sc[i]))
                if attention:
                    used = min(length + 1, len(att))          # the EOS step too
                    real = int(np.count_nonzero(part[i] != PAD))
                    a = np.stack([att[t][i] for t in range(used)], axis=2)  # (L, h, steps, T)
                    attn.append(a[..., :real].tolist())
    if not all(math.isfinite(v) for v in scores):
        raise SpecError("inputs", "the decoder's probabilities are not finite for these inputs")
    result = {"outputs": outputs, "scores": scores}
    if attention:
        result["attention"] = attn
    return result
