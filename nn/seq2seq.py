"""Sequence to sequence: the reserved token ids, the checks of seq2seq data, teacher forcing,
the loss and metrics over the target tokens that are not PAD, and the forward and backward
pass of an encoder-decoder network (network {"encoder": {"layers"}, "decoder": {"layers"}}).

Data: sources (N, T_src) and targets (N, T_tgt) of token ids, right-padded with PAD; every
target row is its symbols, then EOS, then PAD. The decoder reads BOS + the target shifted
right by one (teacher forcing) and is trained to output the target: a softmax over the
decoder's vocabulary at every target position; positions holding PAD count for nothing.

The two stacks are one flat list of layers (the plan's, encoder's first, `n_enc` of them), so
weights, checkpoints, optimizers and statistics treat them as any network's. PAD is masked
out of every attention's keys: the encoder's self-attention (src_mask), the decoder's
self-attention (tgt_mask, besides its causal mask) and its cross-attention (src_mask).
"""
from typing import NamedTuple

import numpy as np

from .activations import log_softmax
from .errors import SpecError

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3

# Layers each stack may hold. Decoding runs the decoder one position at a time, so its
# layers are position-wise or the decoder block itself (which caches its keys and values).
ENCODER_KINDS = ("embedding", "positional_encoding", "transformer_encoder", "self_attention",
                 "dense", "layer_norm", "dropout")
DECODER_KINDS = ("embedding", "positional_encoding", "transformer_decoder", "dense",
                 "layer_norm", "dropout")
MASKED_KINDS = ("transformer_encoder", "self_attention")     # take a key padding mask


def _ids(values, path: str) -> np.ndarray:
    """-> (N, T) int64 token ids; SpecError(path) unless a rectangular array of integers
    >= 0 (integer-valued floats accepted, as JSON and NPZ may bring them)."""
    try:
        a = np.asarray(values)
    except ValueError as e:
        raise SpecError(path, f"not a rectangular array ({e}); pad rows with {PAD}") from None
    if a.dtype.kind not in "biuf" or a.dtype.kind == "b":
        raise SpecError(path, "must be integer token ids")
    if a.ndim != 2 or 0 in a.shape:
        raise SpecError(path, f"must be an array (N, T) of token ids, got shape {a.shape}")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and np.array_equal(a, np.floor(a))):
        raise SpecError(path, "must be integer token ids")
    if a.min() < 0 or a.max() >= 2**31:
        raise SpecError(path, "token ids must be integers in [0, 2^31)")
    return a.astype(np.int64)


def _first_bad_row(bad: np.ndarray) -> int | None:
    rows = np.flatnonzero(bad)
    return int(rows[0]) if len(rows) else None


def check_sources(values, path: str = "inputs") -> np.ndarray:
    """-> (N, T_src) int64; SpecError unless every row is at least one token, then only PAD."""
    x = _ids(values, path)
    real = x != PAD
    if (i := _first_bad_row(~real[:, 0])) is not None:
        raise SpecError(f"{path}[{i}]", f"must start with a token (sequences are right-padded "
                                        f"with {PAD}; an empty source has nothing to read)")
    if (i := _first_bad_row((real[:, 1:] & ~real[:, :-1]).any(axis=1))) is not None:
        raise SpecError(f"{path}[{i}]", f"has a token after padding ({PAD}): pad on the right")
    return x


def check_targets(values, n: int, path: str = "targets") -> np.ndarray:
    """-> (N, T_tgt) int64; SpecError unless every row is symbols (no PAD, BOS or EOS), EOS,
    then only PAD."""
    t = _ids(values, path)
    if len(t) != n:
        raise SpecError(path, f"has {len(t)} rows for {n} input rows")
    eos = t == EOS
    if (i := _first_bad_row(eos.sum(axis=1) != 1)) is not None:
        raise SpecError(f"{path}[{i}]", f"must hold exactly one EOS ({EOS}), after its symbols")
    end = eos.argmax(axis=1)                                   # EOS's position per row
    pos = np.arange(t.shape[1])[None, :]
    before, after = pos < end[:, None], pos > end[:, None]
    if (i := _first_bad_row((before & (t < FIRST_SYMBOL)).any(axis=1))) is not None:
        raise SpecError(f"{path}[{i}]", f"symbols before EOS must be ids >= {FIRST_SYMBOL} "
                                        f"({PAD} PAD, {BOS} BOS, {EOS} EOS are reserved)")
    if (i := _first_bad_row((after & (t != PAD)).any(axis=1))) is not None:
        raise SpecError(f"{path}[{i}]", f"only PAD ({PAD}) may follow EOS")
    return t


def teacher_input(t: np.ndarray) -> np.ndarray:
    """Targets (N, T) -> what the decoder reads: BOS, then the targets shifted right by one."""
    out = np.empty_like(t)
    out[:, 0] = BOS
    out[:, 1:] = t[:, :-1]
    return out


class Tokens(NamedTuple):
    """A batch's targets as the loss and the metrics take them."""
    t: np.ndarray            # (N, T) target ids
    real: np.ndarray         # (N, T) bool: not PAD
    count: int               # real tokens


def tokens(t: np.ndarray) -> Tokens:
    real = t != PAD
    return Tokens(t, real, max(int(np.count_nonzero(real)), 1))


def loss_grad(z: np.ndarray, a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """dL/dz of L = the mean over the real (non-PAD) target tokens of -log softmax(z)_t;
    z, a = softmax(z): (N, T, V), t: (N, T). d(-log softmax_t)/dz = softmax - onehot(t)."""
    tok = tokens(t)
    d = a.copy()
    n, T, V = d.shape
    d.reshape(-1, V)[np.arange(n * T), t.reshape(-1)] -= 1.0
    d *= (tok.real / tok.count)[..., None]
    return d


class Scores(NamedTuple):
    loss_sum: float          # sum of -log p over real tokens
    hits: int                # real tokens predicted right (argmax)
    exact: int               # sequences whose every real token is right
    tokens: int
    sequences: int


def scores(z: np.ndarray, t: np.ndarray) -> Scores:
    """Teacher-forced scores of logits z (N, T, V) against targets t (N, T)."""
    real = t != PAD
    picked = np.take_along_axis(log_softmax(z), t[..., None], axis=-1)[..., 0]
    nll = np.where(real, -picked, 0.0)
    right = (z.argmax(axis=-1) == t) | ~real
    return Scores(float(nll.sum()), int(np.count_nonzero(right & real)),
                  int(np.count_nonzero(right.all(axis=1))), int(np.count_nonzero(real)), len(t))


def summary(s: Scores) -> tuple[float, float, float]:
    """-> (loss per real token, token accuracy, exact match)."""
    return s.loss_sum / max(s.tokens, 1), s.hits / max(s.tokens, 1), s.exact / max(s.sequences, 1)


def add(a: Scores, b: Scores) -> Scores:
    return Scores(*(x + y for x, y in zip(a, b)))


# --- the two stacks, forward and backward -----------------------------------------------------

def layer_forward(layer, x, params, *, train: bool, rng=None, mask=None, memory=None,
                  src_mask=None):
    """One layer of either stack: the attention layers with their key padding mask (mask:
    the stack's own tokens), a decoder block also with the encoder's output and its mask."""
    if layer.takes_memory:
        return layer.forward(x, params, train=train, rng=rng, memory=memory,
                             src_mask=src_mask, tgt_mask=mask)
    if layer.masks_keys:
        return layer.forward(x, params, train=train, rng=rng, key_mask=mask)
    return layer.forward(x, params, train=train, rng=rng)


class Pass(NamedTuple):
    """What forward() keeps for backward() and the statistics."""
    caches: list             # one per layer, flat (encoder's, then decoder's)
    outputs: list | None     # every layer's output, when asked for
    memory: np.ndarray       # (N, T_src, D) the encoder's output


def forward(layers, n_enc: int, params, src: np.ndarray, t_in: np.ndarray, *, train: bool,
            rng=None, outputs: list | None = None, keep: bool = True
            ) -> tuple[np.ndarray, Pass]:
    """src (N, T_src) and the decoder's input t_in (N, T_tgt) token ids -> the decoder's
    output a (N, T_tgt, V) (softmax) and the Pass (its last cache's z is the logits).
    keep False (evaluation): each cache but the output layer's goes as soon as its layer
    returns, so the peak is one layer's and the encoder's output, as network.infer's."""
    src_mask, tgt_mask = src != PAD, t_in != PAD
    caches = []
    h = src
    for layer, p in zip(layers[:n_enc], params[:n_enc]):
        h, c = layer_forward(layer, h, p, train=train, rng=rng, mask=src_mask)
        caches.append(c if keep else None)
        if outputs is not None:
            outputs.append(h)
    memory = h
    y = t_in
    for layer, p in zip(layers[n_enc:], params[n_enc:]):
        y, c = layer_forward(layer, y, p, train=train, rng=rng, mask=tgt_mask, memory=memory,
                             src_mask=src_mask)
        caches.append(c if keep else None)
        if outputs is not None:
            outputs.append(y)
    caches[-1] = c
    return y, Pass(caches, outputs, memory)


def backward(layers, n_enc: int, dz: np.ndarray, run: Pass, traces: list | None = None
             ) -> list[dict]:
    """dz: dL/d(logits) of the decoder's output layer -> the gradients of every layer's
    params (flat). The decoder blocks' gradients with respect to the encoder's output
    (cross-attention's keys and values) are summed and sent back through the encoder."""
    grads: list[dict] = [{} for _ in layers]
    caches = run.caches
    last = len(layers) - 1
    dmem = np.zeros_like(run.memory, dtype=dz.dtype)
    d = dz
    for i in range(last, n_enc - 1, -1):
        layer, need_dx = layers[i], i > n_enc
        if i == last:
            d, grads[i] = layer.backward_z(d, caches[i], need_dx)
        elif layer.takes_memory:
            if traces is not None:
                d, dm, grads[i], traces[i] = layer.backward_traced(d, caches[i])
            else:
                d, dm, grads[i] = layer.backward(d, caches[i])
            dmem += dm
        elif traces is not None:
            d, grads[i], traces[i] = layer.backward_traced(d, caches[i], need_dx)
        else:
            d, grads[i] = layer.backward(d, caches[i], need_dx)
    d = dmem
    for i in range(n_enc - 1, -1, -1):
        layer = layers[i]
        if traces is not None:
            d, grads[i], traces[i] = layer.backward_traced(d, caches[i], i > 0)
        else:
            d, grads[i] = layer.backward(d, caches[i], i > 0)
    return grads


def logits(run: Pass) -> np.ndarray:
    """The decoder's output layer's pre-activation z (N, T_tgt, V)."""
    return run.caches[-1].z


def evaluate(layers, n_enc: int, params, src: np.ndarray, t: np.ndarray, rows: int) -> Scores:
    """Teacher-forced eval-mode scores over (src, t) in chunks of `rows` samples."""
    total = Scores(0.0, 0, 0, 0, 0)
    t_in = teacher_input(t)
    for s in range(0, len(src), max(rows, 1)):
        _, run = forward(layers, n_enc, params, src[s:s + rows], t_in[s:s + rows],
                         train=False, keep=False)
        total = add(total, scores(logits(run), t[s:s + rows]))
    return total

