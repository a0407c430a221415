"""nn.generate: the TensorFlow Playground data sets (nn/playground.py) and data sets for the
deep structures: images for a CNN, sequences for an RNN, position and next-token tasks for a
Transformer.

Every kind takes n_samples (an int in [2, 100000]), noise (0..50, the Playground slider's
percent; n = noise / 100 below) and seed (an int >= 0, or None: not reproducible). The new
kinds take shape parameters too (GENERATOR_DEFAULTS, LIMITS). Bad arguments ->
SpecError("generator.<field>").

- glyphs: images X (N, S, S), S = size, read by conv2d as (H, W) with C = 1; y (N,) in 0..9,
  balanced. Each image is one of ten 5 x 5 digit glyphs, placed at a random offset (any of
  (S - 4)^2), its ink at a random intensity U(0.5, 1) per image, plus Gaussian pixel noise
  N(0, n^2) on every pixel.
- parity: X (N, T, 1), T = length: random bit strings (0.0 / 1.0) of a random length L
  uniform in 1..T, left-padded with zeros to T (zeros leave the parity alone; the short
  strings are what lets a recurrent net find the rule), + Gaussian jitter N(0, n^2);
  y (N,) = the number of 1 bits mod 2 (of the bits before jitter).
- max_position: X (N, T, 1) values U(0, 1) + Gaussian jitter N(0, n^2) after labelling;
  y (N,) in 0..T-1, the position of the largest value. Order matters: a network that cannot
  tell positions apart (self-attention without positional encoding) is at chance, 1/T.
- next_token: X (N, T) token ids (integer-valued floats) of arithmetic sequences
  x_t = (s + k t) mod V, s uniform in 0..V-1, k uniform in {1, 2, 3}, V = vocab_size;
  y (N, T) the next token of each position, y_t = (s + k (t + 1)) mod V (int64). With noise,
  each input token but the first is replaced by a random one with probability n (targets
  keep the rule). Needs task "classification" in describe (labels per time step); with
  enough samples every token occurs as a target, so the classes are 0..V-1.
- reverse, sort, copy (task "seq2seq", nn/seq2seq.py's ids: 0 PAD, 1 BOS, 2 EOS): X (N, L)
  sources of a length uniform in 2..L (L = length), symbols uniform in 3..vocab_size-1, then
  PAD; y (N, L + 1) the source reversed, sorted (ascending) or copied, then EOS, then PAD.
  With noise, each target symbol is replaced by a random symbol with probability n.
"""
import numpy as np

from .errors import SpecError
from .playground import KINDS as PLAYGROUND_KINDS
from .playground import MAX_SAMPLES, playground
from .seq2seq import EOS, FIRST_SYMBOL, PAD

GENERATOR_DEFAULTS: dict[str, dict[str, int]] = {
    "glyphs": {"size": 8}, "parity": {"length": 8}, "max_position": {"length": 8},
    "next_token": {"length": 12, "vocab_size": 16},
    "reverse": {"length": 8, "vocab_size": 12}, "sort": {"length": 8, "vocab_size": 12},
    "copy": {"length": 8, "vocab_size": 12}}
SEQ2SEQ_KINDS = ("reverse", "sort", "copy")                 # task "seq2seq"
LIMITS = {"size": (6, 32), "length": (2, 64), "vocab_size": (4, 1000)}
KINDS = (*PLAYGROUND_KINDS, *GENERATOR_DEFAULTS)

_GLYPHS = """
.###. ..#.. .###. ####. #..#. ##### .###. ##### .###. .###.
#...# .##.. #...# ....# #..#. #.... #.... ...#. #...# #...#
#...# ..#.. ..##. .###. ##### ####. ####. ..#.. .###. .####
#...# ..#.. .#... ....# ...#. ....# #...# .#... #...# ....#
.###. .###. ##### ####. ...#. ####. .###. .#... .###. .###.
"""


def glyph_bitmaps() -> np.ndarray:
    """(10, 5, 5) 0/1: the digits 0..9."""
    rows = [line.split() for line in _GLYPHS.strip().splitlines()]
    return np.array([[[c == "#" for c in row[d]] for row in rows] for d in range(10)],
                    dtype=np.float64)


def _glyphs(rng, n_samples, n, size):
    y = rng.permutation(np.arange(n_samples) % 10)
    X = np.zeros((n_samples, size, size))
    offsets = rng.integers(0, size - 4, (n_samples, 2))
    ink = rng.uniform(0.5, 1.0, n_samples)
    rows = offsets[:, 0, None, None] + np.arange(5)[None, :, None]
    cols = offsets[:, 1, None, None] + np.arange(5)[None, None, :]
    X[np.arange(n_samples)[:, None, None], rows, cols] = glyph_bitmaps()[y] * ink[:, None, None]
    return X + rng.normal(0.0, n, X.shape) if n else X, y


def _parity(rng, n_samples, n, length):
    bits = rng.integers(0, 2, (n_samples, length))
    lengths = rng.integers(1, length + 1, n_samples)
    bits[np.arange(length)[None, :] < (length - lengths)[:, None]] = 0     # left padding
    X = bits[..., None].astype(np.float64)
    return X + rng.normal(0.0, n, X.shape) if n else X, bits.sum(axis=1) % 2


def _max_position(rng, n_samples, n, length):
    X = rng.uniform(0.0, 1.0, (n_samples, length, 1))
    y = X[..., 0].argmax(axis=1)
    return X + rng.normal(0.0, n, X.shape) if n else X, y


def _next_token(rng, n_samples, n, length, vocab_size):
    start = rng.integers(0, vocab_size, (n_samples, 1))
    step = rng.integers(1, 4, (n_samples, 1))
    seq = (start + step * np.arange(length + 1)) % vocab_size
    X = seq[:, :-1].astype(np.float64)
    if n:
        noisy = rng.random(X.shape) < n
        noisy[:, 0] = False
        X[noisy] = rng.integers(0, vocab_size, int(noisy.sum()))
    return X, seq[:, 1:]


def _seq2seq(kind):
    def make(rng, n_samples, n, length, vocab_size):
        lengths = rng.integers(2, length + 1, n_samples)
        real = np.arange(length)[None, :] < lengths[:, None]
        X = np.where(real, rng.integers(FIRST_SYMBOL, vocab_size, (n_samples, length)), PAD)
        if kind == "reverse":          # row i's symbols are X[i, :L_i]: take them backwards
            pos = np.clip(lengths[:, None] - 1 - np.arange(length)[None, :], 0, None)
            body = np.where(real, np.take_along_axis(X, pos, axis=1), PAD)
        elif kind == "sort":           # PAD sorts last when it counts as the largest id
            body = np.sort(np.where(real, X, np.iinfo(np.int64).max), axis=1)
            body[~real] = PAD
        else:
            body = X.copy()
        if n:
            noisy = real & (rng.random(X.shape) < n)
            body[noisy] = rng.integers(FIRST_SYMBOL, vocab_size, int(noisy.sum()))
        y = np.zeros((n_samples, length + 1), np.int64)
        y[:, :length] = body
        y[np.arange(n_samples), lengths] = EOS
        return X, y
    return make


_GENERATORS = {"glyphs": _glyphs, "parity": _parity, "max_position": _max_position,
               "next_token": _next_token, **{kind: _seq2seq(kind) for kind in SEQ2SEQ_KINDS}}


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _checked(kind, n_samples, noise, seed, params) -> dict:
    """generate's arguments checked (SpecError("generator.<field>")) -> the kind's shape
    parameters, defaults filled in."""
    if kind not in KINDS:
        raise SpecError("generator.kind", f"must be one of {', '.join(KINDS)}, not {kind!r}")
    if not _int(n_samples) or not 2 <= n_samples <= MAX_SAMPLES:
        raise SpecError("generator.n_samples", f"must be an integer in [2, {MAX_SAMPLES}]")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) \
            or not 0 <= noise <= 50:
        raise SpecError("generator.noise", "must be a number in [0, 50] (the Playground slider)")
    if seed is not None and (not _int(seed) or seed < 0):
        raise SpecError("generator.seed", "must be a non-negative integer or null")
    defaults = GENERATOR_DEFAULTS.get(kind, {})
    for key, v in params.items():
        if key not in defaults:
            expected = ", ".join(["kind", "n_samples", "noise", "seed", *defaults])
            raise SpecError(f"generator.{key}", f"unknown field for {kind} (expected one of: "
                                                f"{expected})")
        lo, hi = LIMITS[key]
        if not _int(v) or not lo <= v <= hi:
            raise SpecError(f"generator.{key}", f"must be an integer in [{lo}, {hi}]")
    return {**defaults, **params}


def generate(kind: str, n_samples: int = 500, noise: float = 0, seed: int | None = None,
             **params) -> tuple[np.ndarray, np.ndarray]:
    """-> (X, y) float64 inputs and int64 labels; shapes per kind in the module docstring.
    Bad args -> SpecError("generator.<field>")."""
    shape_params = _checked(kind, n_samples, noise, seed, params)
    rng = np.random.default_rng(seed)
    if kind in PLAYGROUND_KINDS:
        return playground(kind, rng, n_samples, noise / 100)
    X, y = _GENERATORS[kind](rng, n_samples, noise / 100, **shape_params)
    return X.astype(np.float64), y.astype(np.int64)


def generator_shapes(kind: str, n_samples: int = 500, noise: float = 0,
                     seed: int | None = None, **params) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The per-sample shapes (of X, of y) generate() would make with these arguments, known
    without making anything (so a caller can cost a data set first). Bad args as generate."""
    p = _checked(kind, n_samples, noise, seed, params)
    if kind in PLAYGROUND_KINDS:
        return (2,), ()
    if kind == "glyphs":
        return (p["size"], p["size"]), ()
    if kind == "next_token":
        return (p["length"],), (p["length"],)
    if kind in SEQ2SEQ_KINDS:
        return (p["length"],), (p["length"] + 1,)
    return (p["length"], 1), ()                              # parity, max_position
