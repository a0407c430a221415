"""Seq2seq data: the generators, describe(task="seq2seq") and its checks."""
import numpy as np
import pytest

import nn
from nn.generators import SEQ2SEQ_KINDS, generate, generator_shapes
from nn.seq2seq import BOS, EOS, PAD, check_sources, check_targets, teacher_input


def _rows(X, y):
    """-> [(source symbols, target symbols)] of each row."""
    out = []
    for x, t in zip(X.astype(int), y):
        src = [v for v in x if v != PAD]
        end = list(t).index(EOS)
        assert all(v == PAD for v in t[end + 1:])
        out.append((src, list(t[:end])))
    return out


@pytest.mark.parametrize("kind,rule", [("reverse", lambda s: s[::-1]), ("sort", sorted),
                                       ("copy", list)])
def test_generators_follow_their_rule(kind, rule):
    X, y = generate(kind, 300, seed=3, length=7, vocab_size=9)
    assert X.shape == (300, 7) and y.shape == (300, 8) and y.dtype == np.int64
    assert generator_shapes(kind, 300, length=7, vocab_size=9) == ((7,), (8,))
    lengths = set()
    for src, tgt in _rows(X, y):
        assert tgt == rule(src)
        assert all(3 <= v < 9 for v in src)
        lengths.add(len(src))
    assert lengths == set(range(2, 8))                 # lengths drawn from 2..length
    info = nn.describe(X, y, "seq2seq")
    assert (info.task, info.input_shape, info.target_shape) == ("seq2seq", (7,), (8,))
    assert info.vocab_sizes == (9, 9) and info.classes is None


def test_generator_noise_replaces_target_symbols_only():
    X, y = generate("reverse", 500, noise=30, seed=1, length=6, vocab_size=12)
    clean = generate("reverse", 500, noise=0, seed=1, length=6, vocab_size=12)[1]
    changed = (y != clean)
    assert changed.any()
    assert ((clean[changed] >= 3) & (y[changed] >= 3)).all()   # never EOS or PAD
    assert set(SEQ2SEQ_KINDS) == {"reverse", "sort", "copy"}


def test_generator_fields_are_checked():
    with pytest.raises(nn.SpecError) as e:
        generate("reverse", 10, vocab_size=3)
    assert e.value.path == "generator.vocab_size"
    with pytest.raises(nn.SpecError) as e:
        generate("copy", 10, length=1)
    assert e.value.path == "generator.length"


@pytest.mark.parametrize("inputs,targets,path", [
    ([[3, 4], [5, 0]], [[3, 2, 0], [5, 6, 2]], None),
    ([[3, 4], [0, 5]], [[3, 2, 0], [5, 6, 2]], "inputs[1]"),        # padded on the left
    ([[3, 0, 4]], [[3, 2, 0]], "inputs[0]"),                           # a token after PAD
    ([[3, -1]], [[3, 2]], "inputs"),                                   # negative
    ([[3.5, 4]], [[3, 2]], "inputs"),                                  # not an integer
    ([[3, 4]], [[3, 4]], "targets[0]"),                                # no EOS
    ([[3, 4]], [[3, 2, 2]], "targets[0]"),                             # two EOS
    ([[3, 4]], [[3, 2, 5]], "targets[0]"),                             # a token after EOS
    ([[3, 4]], [[0, 3, 2]], "targets[0]"),                             # PAD before EOS
    ([[3, 4]], [[1, 3, 2]], "targets[0]"),                             # BOS in targets
    ([[3, 4], [4, 5]], [[3, 2]], "targets"),                           # rows differ
    ([[3, 4], [4]], [[3, 2], [3, 2]], "inputs"),                       # ragged
])
def test_describe_checks_token_ids(inputs, targets, path):
    if path is None:
        info = nn.describe(inputs, targets, "seq2seq")
        assert info.vocab_sizes == (6, 7) and info.n_samples == 2
        return
    with pytest.raises(nn.SpecError) as e:
        nn.describe(inputs, targets, "seq2seq")
    assert e.value.path == path


def test_teacher_input_is_bos_then_the_shifted_target():
    t = check_targets([[5, 6, 2, 0], [7, 2, 0, 0]], 2)
    assert teacher_input(t).tolist() == [[BOS, 5, 6, 2], [BOS, 7, 2, 0]]
    assert check_sources(np.array([[3.0, 4.0, 0.0]])).dtype == np.int64
