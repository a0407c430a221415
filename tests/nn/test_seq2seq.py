"""The encoder-decoder network: its spec, the gradient of the whole loss, training through the
one driver (resume, statistics, epoch rows), and decoding (nn/decode.py)."""
import copy

import numpy as np
import pytest

import nn
from nn import seq2seq
from nn.decode import Decoder
from nn.generators import generate
from nn.gradcheck import numerical_gradient, rel_error
from nn.seq2seq import BOS, EOS, PAD

V = 8


def network(dim=8, heads=2, vocab=V, out=None, norm="pre", blocks=1):
    return {"encoder": {"layers": [{"type": "embedding", "vocab_size": vocab, "dim": dim},
                                   {"type": "positional_encoding"},
                                   {"type": "transformer_encoder", "heads": heads,
                                    "ff_units": 2 * dim, "norm": norm}]},
            "decoder": {"layers": [{"type": "embedding", "vocab_size": vocab, "dim": dim},
                                   {"type": "positional_encoding"},
                                   *[{"type": "transformer_decoder", "heads": heads,
                                      "ff_units": 2 * dim, "norm": norm}] * blocks,
                                   {"type": "dense", "units": out or vocab,
                                    "activation": "softmax"}]}}


TRAINING = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.003},
            "batch_size": 16, "epochs": 3, "seed": 4, "validation_fraction": 0.25}


def data(n=64, length=5, seed=0, kind="reverse"):
    X, y = generate(kind, n, seed=seed, length=length, vocab_size=V)
    return X, y, nn.describe(X, y, "seq2seq")


def plan(net=None, training=None, info=None):
    return nn.build(net or network(), {**TRAINING, **(training or {})}, info or data()[2])


# --- the spec -----------------------------------------------------------------------------------

def _error(net, training=None, info=None) -> str:
    with pytest.raises(nn.SpecError) as e:
        plan(net, training, info)
    return e.value.path


def test_plan_is_one_flat_list_encoder_first():
    p = plan()
    assert p.encoder_layers == 3 and len(p.layers) == 7
    assert [l.kind for l in p.layers[3:]] == ["embedding", "positional_encoding",
                                               "transformer_decoder", "dense"]
    assert set(p.network) == {"encoder", "decoder"}
    assert p.network["decoder"]["layers"][2]["ff_units"] == 16     # defaults filled in


def test_spec_errors_name_their_fields():
    net = network()
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"][3]["units"] = 7
    assert _error(bad) == "network.decoder.layers[3].units"
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"][3]["activation"] = "sigmoid"
    assert _error(bad) == "network.decoder.layers[3].activation"
    bad = copy.deepcopy(net)
    bad["encoder"]["layers"][0]["vocab_size"] = 5                  # sources hold ids up to 7
    assert _error(bad) == "network.encoder.layers[0].vocab_size"
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"][0]["vocab_size"] = 6
    assert _error(bad) == "network.decoder.layers[0].vocab_size"
    bad = copy.deepcopy(net)
    bad["encoder"]["layers"][2] = {"type": "transformer_decoder", "heads": 2}
    assert _error(bad) == "network.encoder.layers[2].type"
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"][2] = {"type": "transformer_encoder", "heads": 2}
    assert _error(bad) == "network.decoder.layers[2].type"
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"][2] = {"type": "layer_norm"}           # never reads the source
    assert _error(bad) == "network.decoder.layers"
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"][0] = {"type": "dense", "units": 8}
    assert _error(bad) == "network.decoder.layers[0].type"
    bad = copy.deepcopy(net)
    bad["encoder"]["layers"].append({"type": "dense", "units": 8, "activation": "softmax"})
    assert _error(bad) == "network.encoder.layers[3].activation"
    bad = copy.deepcopy(net)
    bad["decoder"]["layers"].insert(3, {"type": "dense", "units": 8, "activation": "step"})
    assert _error(bad) == "network.decoder.layers[3].activation"
    assert _error({**net, "extra": 1}) == "network.extra"
    assert _error({"encoder": net["encoder"]}) == "network.decoder"
    assert _error(net, {"loss": "squared_error"}) == "training.loss"
    assert _error(net, {"standardize": True}) == "training.standardize"
    # the two forms against the other kind of data
    assert _error({"layers": [{"type": "dense", "units": 8, "activation": "softmax"}]}) \
        == "network"
    X, y = nn.generate("next_token", 20, length=5, vocab_size=8)
    info = nn.describe(X, y, "classification")
    assert _error(net, info=info) == "network.encoder"
    plain = {"layers": [{"type": "embedding", "vocab_size": 8, "dim": 8},
                        {"type": "transformer_decoder"},
                        {"type": "dense", "units": 8, "activation": "softmax"}]}
    assert _error(plain, info=info) == "network.layers[1].type"


def test_cross_attention_reads_an_encoder_of_another_width():
    net = network()
    net["encoder"]["layers"][0]["dim"] = 12
    net["encoder"]["layers"][2]["heads"] = 3
    p = plan(net)
    X, y, _ = data()
    r = nn.train(p, X, y)
    assert np.isfinite(r.metrics["train_loss"])


# --- the gradient -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["pre", "post"])
def test_whole_loss_gradient_matches_finite_differences(norm):
    """Every weight of both stacks, with PAD in sources and targets: the encoder's weights
    get their gradient only through the decoder's cross-attention."""
    p = plan(network(dim=4, heads=2, norm=norm, blocks=2), {"dtype": "float64"})
    layers, n_enc = list(p.layers), p.encoder_layers
    rng = np.random.default_rng(0)
    params = nn.network.init_params(layers, rng, np.float64)
    for w in params:                       # layer norms away from their initial 1 and 0
        for k, v in w.items():
            if "gamma" in k or "beta" in k:
                v += rng.normal(0, 0.3, v.shape)
    src = np.array([[3, 5, 7, 0, 0], [6, 4, 0, 0, 0], [7, 7, 3, 5, 4]])
    t = np.array([[7, 5, 3, 2, 0, 0], [4, 6, 2, 0, 0, 0], [4, 5, 3, 7, 7, 2]])
    t_in = seq2seq.teacher_input(t)

    def loss():
        _, run = seq2seq.forward(layers, n_enc, params, src, t_in, train=True)
        s = seq2seq.scores(seq2seq.logits(run), t)
        return s.loss_sum / s.tokens

    a, run = seq2seq.forward(layers, n_enc, params, src, t_in, train=True)
    grads = seq2seq.backward(layers, n_enc, seq2seq.loss_grad(seq2seq.logits(run), a, t), run)
    checked = 0
    for i, w in enumerate(params):
        for k, v in w.items():
            num = numerical_gradient(loss, v)
            assert rel_error(grads[i][k], num) < 1e-6 or \
                np.abs(grads[i][k] - num).max() < 1e-9, (i, k)
            checked += 1
    assert checked == sum(len(l.param_shapes()) for l in layers)
    assert np.abs(grads[2]["Wq"]).max() > 0        # the encoder learns through cross-attention


def test_pad_is_masked_out_of_the_loss_and_the_keys():
    """Changing what a PAD position holds on either side changes no loss and no gradient."""
    p = plan()
    layers, n_enc = list(p.layers), p.encoder_layers
    params = nn.network.init_params(layers, np.random.default_rng(1), np.float64)
    src = np.array([[3, 5, 0, 0, 0]])
    t = np.array([[5, 3, 2, 0, 0, 0]])
    z1 = seq2seq.logits(seq2seq.forward(layers, n_enc, params, src, seq2seq.teacher_input(t),
                                        train=False)[1])
    s1 = seq2seq.scores(z1, t)
    assert s1.tokens == 3
    longer = np.array([[3, 5, 0, 0, 0], [3, 5, 6, 7, 4]])           # a batch of two
    t2 = np.array([[5, 3, 2, 0, 0, 0], [4, 7, 6, 5, 3, 2]])
    z2 = seq2seq.logits(seq2seq.forward(layers, n_enc, params, longer,
                                        seq2seq.teacher_input(t2), train=False)[1])
    np.testing.assert_allclose(z2[0, :3], z1[0, :3], rtol=1e-12, atol=1e-12)


# --- training -----------------------------------------------------------------------------------

def test_epoch_rows_statistics_and_bit_identical_resume():
    X, y, info = data(80)
    p = plan(None, {"epochs": 4, "batch_size": 8, "optimizer": {"type": "sgd",
                                                                 "learning_rate": 0.1,
                                                                 "momentum": 0.9},
                    "lr_schedule": {"type": "step", "step_size": 2},
                    "early_stopping": {"patience": 5}}, info)
    rows, saved = [], {}
    full = nn.train(p, X, y, on_epoch=rows.append, checkpoint_every=2,
                    on_checkpoint=lambda e, b: saved.setdefault(e, b))
    assert len(rows) == 4
    r = rows[-1]
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy",
                "train_exact_match", "val_exact_match"):
        assert getattr(r, key) is not None and 0 <= getattr(r, key) < 10
    names = [s["name"] for s in r.layer_stats]
    assert names == ["encoder.embedding_0", "encoder.transformer_encoder_2",
                     "decoder.embedding_0", "decoder.transformer_decoder_2", "decoder.dense_3"]
    assert [s["layer"] for s in r.layer_stats] == [0, 2, 3, 5, 6]
    assert "val_exact_match" in full.metrics
    resumed_rows: list = []
    resumed = nn.train(p, X, y, resume=saved[2], on_epoch=resumed_rows.append)
    for a, b in zip(full.weights, resumed.weights):
        for k in a:
            assert np.array_equal(a[k], b[k])
    assert [x.val_loss for x in resumed_rows] == [x.val_loss for x in rows[2:]]
    # other tasks' rows carry None, and their final metrics leave the fields out
    Xc, yc = nn.generate("xor", 20, seed=1)
    other = nn.build({"layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}]},
                     {"epochs": 1}, nn.describe(Xc, yc))
    crows: list = []
    res = nn.train(other, Xc, yc, on_epoch=crows.append)
    assert crows[0].val_exact_match is None and "val_exact_match" not in res.metrics


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_per_sample_sgd_with_dropout_resumes_bit_identically(dtype):
    X, y, info = data(24)
    net = network()
    net["encoder"]["layers"].insert(2, {"type": "dropout", "drop_prob": 0.2})
    net["decoder"]["layers"].insert(3, {"type": "dropout", "drop_prob": 0.2})
    p = plan(net, {"epochs": 3, "batch_size": 1, "dtype": dtype,
                   "optimizer": {"type": "adam", "learning_rate": 0.001},
                   "lr_schedule": {"type": "exponential", "gamma": 0.9}}, info)
    saved = {}
    full = nn.train(p, X, y, checkpoint_every=1, on_checkpoint=lambda e, b: saved.setdefault(e, b))
    resumed = nn.train(p, X, y, resume=saved[1])
    assert full.weights[0]["E"].dtype == np.dtype(dtype)
    for a, b in zip(full.weights, resumed.weights):
        for k in a:
            assert np.array_equal(a[k], b[k])
    assert full.metrics == resumed.metrics


def test_train_metrics_are_the_outputs_before_the_update():
    """One batch of the whole split with a negligible step: the epoch's on-the-fly
    training metrics are those of the initial weights in eval mode."""
    X, y, info = data(40)
    p = plan(None, {"epochs": 1, "batch_size": None, "validation_fraction": 0.0,
                    "optimizer": {"type": "sgd", "learning_rate": 1e-300}}, info)
    rows: list = []
    nn.train(p, X, y, on_epoch=rows.append)
    initial = nn.train(plan(None, {"epochs": 0, "validation_fraction": 0.0}, info), X, y)
    assert rows[0].train_loss == pytest.approx(initial.metrics["train_loss"], rel=1e-12)
    assert rows[0].train_accuracy == initial.metrics["train_accuracy"]
    assert rows[0].train_exact_match == initial.metrics["train_exact_match"]


def test_no_epochs_measures_the_initial_weights():
    X, y, info = data(40)
    r = nn.train(plan(None, {"epochs": 0}, info), X, y)
    assert r.metrics["train_loss"] > 0.5 and r.metrics["val_exact_match"] is not None


def test_budget_counts_the_attention():
    short, long = data(64, length=4)[2], data(64, length=16)[2]
    a = nn.budget.estimate(plan(None, None, short))
    b = nn.budget.estimate(plan(None, None, long))
    assert b.multiply_adds > 4 * a.multiply_adds and b.memory_bytes > a.memory_bytes
    assert a.seconds > 0


# --- decoding -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    X, y, info = data(160, seed=1)
    p = plan(network(dim=16, heads=2), {"epochs": 4}, info)
    return nn.train(p, X, y).model


def _recompute_greedy(model, src, steps):
    """Greedy decoding that reruns the whole teacher-forced decoder at every step."""
    layers, n_enc = model.layers, model.encoder_layers
    T_tgt = layers[n_enc].in_shape[0]
    x = np.zeros((len(src), layers[0].in_shape[0]), np.int64)
    for i, row in enumerate(src):
        x[i, :len(row)] = row
    t = np.zeros((len(src), T_tgt), np.int64)
    done = np.zeros(len(src), bool)
    for step in range(steps):
        _, run = seq2seq.forward(layers, n_enc, model.weights, x, seq2seq.teacher_input(t),
                                 train=False)
        z = seq2seq.logits(run)[:, step]
        z[:, [PAD, BOS]] = -np.inf
        nxt = z.argmax(axis=-1)
        t[:, step] = np.where(done, PAD, nxt)
        done |= nxt == EOS
    out = []
    for row in t:
        row = list(row)
        out.append(row[:row.index(EOS)] if EOS in row else [v for v in row if v != PAD])
    return out


def test_cached_greedy_equals_recomputing_and_beam_of_one(trained):
    src = [[3, 4, 5], [7, 6, 5, 4, 3], [5, 5]]
    greedy = trained.decode(src)
    assert greedy["outputs"] == _recompute_greedy(trained, src, 6)
    one = trained.decode(src, beam_size=1)
    assert one == greedy
    batched = trained.decode(src, batch_size=1)
    assert batched["outputs"] == greedy["outputs"]
    np.testing.assert_allclose(batched["scores"], greedy["scores"], rtol=1e-12)
    assert all(s <= 0 for s in greedy["scores"])


def test_cached_decoding_through_every_decoder_layer_type():
    """Learned positions, dropout, a layer norm and a hidden dense layer run a position at a
    time as they run on the whole sequence; two decoder blocks, post-norm."""
    X, y, info = data(48, seed=2)
    net = network(dim=8, norm="post", blocks=2)
    dec = net["decoder"]["layers"]
    dec[1] = {"type": "positional_encoding", "mode": "learned"}
    dec[4:4] = [{"type": "dropout", "drop_prob": 0.1}, {"type": "layer_norm"},
                {"type": "dense", "units": 8, "activation": "tanh"}]
    model = nn.train(plan(net, {"epochs": 2}, info), X, y).model
    src = [[3, 4, 5], [7, 6, 5, 4, 3], [5, 5]]
    assert model.decode(src)["outputs"] == _recompute_greedy(model, src, 6)
    # each step's log-probabilities, fed the targets, are the teacher-forced pass's (at the
    # real target positions: past EOS the pass masks its PAD inputs, decoding never feeds any)
    x, t = X[:4].astype(np.int64), y[:4]
    t_in = seq2seq.teacher_input(t)
    _, run = seq2seq.forward(model.layers, model.encoder_layers, model.weights, x, t_in,
                             train=False)
    z = seq2seq.logits(run)
    want = z - z.max(-1, keepdims=True)
    want -= np.log(np.exp(want).sum(-1, keepdims=True))
    dec = Decoder(model)
    memory, states = dec.encode(x), [None, None]
    for step in range(t.shape[1]):
        logp, states, _ = dec.step(t_in[:, step], step, memory, x != PAD, states)
        real = t[:, step] != PAD
        np.testing.assert_allclose(logp[real, EOS:], want[real, step, EOS:], rtol=1e-10,
                                   atol=1e-12)


def test_a_wide_beam_finds_the_best_sequence(trained):
    """max_length 2 and beam_size V * V: the beam keeps every candidate, so it returns the
    most probable of all sequences of up to two tokens, found here by brute force."""
    layers, n_enc = trained.layers, trained.encoder_layers
    for row in ([3, 4, 5], [7, 6]):
        x = np.zeros((1, 5), np.int64)
        x[0, :len(row)] = row
        best, best_out = -np.inf, None
        for t1 in range(EOS, V):
            t_in = np.zeros((1, 6), np.int64)
            t_in[0, :2] = BOS, t1
            _, run = seq2seq.forward(layers, n_enc, trained.weights, x, t_in, train=False)
            z = seq2seq.logits(run)[0]
            m = z.max(axis=-1, keepdims=True)
            logp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
            if t1 == EOS:
                cands = [(logp[0, EOS], [])]
            else:
                cands = [(logp[0, t1] + logp[1, t2], [t1] if t2 == EOS else [t1, t2])
                         for t2 in range(EOS, V)]
            for score, out in cands:
                if score > best:
                    best, best_out = score, out
        r = trained.decode([row], max_length=2, beam_size=V * V)
        assert r["outputs"] == [best_out]
        assert r["scores"][0] == pytest.approx(best, rel=1e-12)


def test_decode_attention_and_errors(trained):
    src = [[3, 4, 5], [7, 6, 5, 4, 3]]
    r = trained.decode(src, attention=True, beam_size=2)
    for row, out, att in zip(src, r["outputs"], r["attention"]):
        a = np.array(att)                  # (layer, head, target step, source position)
        assert a.shape[:2] == (1, 2) and a.shape[3] == len(row)
        assert a.shape[2] in (len(out), len(out) + 1)
        np.testing.assert_allclose(a.sum(axis=-1), 1.0)
    assert len(trained.decode(src, max_length=2)["outputs"][1]) <= 2
    for kwargs, path in [({"inputs": [[3, 9]]}, "inputs[0]"), ({"inputs": [[]]}, "inputs[0]"),
                         ({"inputs": [[3] * 6]}, "inputs[0]"), ({"inputs": []}, "inputs"),
                         ({"inputs": [[3]], "beam_size": 0}, "beam_size"),
                         ({"inputs": [[3]], "max_length": 0}, "max_length")]:
        with pytest.raises(nn.SpecError) as e:
            trained.decode(**kwargs)
        assert e.value.path == path
    with pytest.raises(nn.SpecError):
        trained.predict([[3, 4, 0, 0, 0]])


def test_npz_round_trip(trained):
    back = nn.Model.from_npz(trained.to_npz())
    assert back.encoder_layers == 3 and back.meta["task"] == "seq2seq"
    src = [[3, 4, 5, 6]]
    assert back.decode(src, beam_size=3) == trained.decode(src, beam_size=3)


# --- learning -----------------------------------------------------------------------------------

def _held_out(X, y, seen):
    keep = [i for i, row in enumerate(X.astype(int)) if tuple(row) not in seen]
    return X[keep], y[keep]


def test_reverse_learns_to_exact_match_on_unseen_sequences():
    X, y = generate("reverse", 1200, seed=0, length=5, vocab_size=V)
    info = nn.describe(X, y, "seq2seq")
    p = nn.build(network(dim=32, heads=4), {**TRAINING, "batch_size": 32, "epochs": 20,
                                            "validation_fraction": 0.0}, info)
    model = nn.train(p, X, y).model
    Xt, yt = _held_out(*generate("reverse", 300, seed=7, length=5, vocab_size=V),
                       {tuple(r) for r in X.astype(int)})
    assert len(Xt) > 100
    src = [[int(v) for v in r if v != PAD] for r in Xt]
    want = [[int(v) for v in r if v > EOS] for r in yt]
    out = model.decode(src)["outputs"]
    assert np.mean([o == w for o, w in zip(out, want)]) >= 0.9
