"""nn/driver.py: the epoch's loss and accuracy, and its statistics on chosen epochs
(stats_epochs): the same figures as on every epoch, each phase's last epoch however it ends,
no effect on training."""
import numpy as np
import pytest

import nn
from nn import driver
from nn.driver import metrics
from tests.nn.conftest import dense, plan_for



def every_third(e: int) -> bool:
    return e % 3 == 0


# (net, training): the dense engine's kernel (per-sample SGD) and its buffers (Adam in
# batches), the reference engine, and pretraining (Adam autoencoders, then SGD)
SETUPS = {
    "kernel": ([dense(4, "tanh"), dense(1)],
               {"batch_size": 1, "optimizer": {"type": "sgd", "learning_rate": 0.3}}),
    "buffers": ([dense(8, "relu"), dense(1)],
                {"batch_size": 16, "optimizer": {"type": "adam", "learning_rate": 0.01}}),
    "reference": ([dense(4, "tanh"), {"type": "dropout", "drop_prob": 0.2}, dense(1)],
                  {"batch_size": 8, "engine": "reference",
                   "optimizer": {"type": "sgd", "learning_rate": 0.3, "momentum": 0.9}}),
    "pretraining": ([dense(6, "sigmoid"), dense(4, "sigmoid"), dense(1)],
                    {"batch_size": 8, "optimizer": {"type": "sgd", "learning_rate": 0.5},
                     "pretrain": {"epochs": 5, "optimizer": {"type": "adam"}}}),
}


def plan(xor_data, name: str, **extra) -> nn.Plan:
    X, y = xor_data
    layers, training = SETUPS[name]
    return plan_for(layers, {"epochs": 11, "seed": 5, "validation_fraction": 0.2, **training,
                             **extra}, X, y)


def run(xor_data, p: nn.Plan, **kwargs):
    """-> (reports by (phase, epoch), the late ones, the result)."""
    reports, late = [], []
    result = nn.train(p, *xor_data, on_epoch=reports.append, on_stats=late.append, **kwargs)
    return {(r.phase, r.epoch): r for r in reports}, late, result


def with_stats(reports) -> list[tuple[str, int]]:
    return [k for k, r in reports.items() if r.layer_stats]


def same_weights(a: nn.Weights, b: nn.Weights) -> bool:
    return all(np.array_equal(p[k], q[k]) for p, q in zip(a, b) for k in p)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_chosen_epochs_get_the_figures_of_every_epoch_and_training_is_the_same(
        xor_data, name):
    p = plan(xor_data, name)
    every, _, full = run(xor_data, p)
    chosen, late, thin = run(xor_data, p, stats_epochs=every_third)
    assert list(chosen) == list(every) and not late
    last = {phase: e for phase, e in every}      # dicts keep order: each phase's last epoch
    expected = [(phase, e) for phase, e in every if e % 3 == 0 or e == last[phase]]
    if name == "pretraining":                    # each pretrained layer's last epoch too
        expected = sorted({*expected, ("pretrain", 5), ("pretrain", 10)},
                          key=lambda k: (k[0] != "pretrain", k[1]))
    assert with_stats(chosen) == expected
    assert all(chosen[k].layer_stats == every[k].layer_stats for k in expected)
    assert all(chosen[k].train_loss == every[k].train_loss for k in every)
    assert same_weights(thin.weights, full.weights) and thin.metrics == full.metrics


@pytest.mark.parametrize("name", ["kernel", "reference"])
def test_early_stopping_ends_on_an_epoch_with_statistics(xor_data, name):
    p = plan(xor_data, name, epochs=400, early_stopping={"patience": 2, "min_delta": 0.05})
    every, _, full = run(xor_data, p)
    chosen, late, thin = run(xor_data, p, stats_epochs=lambda e: False)
    assert full.stop_reason == thin.stop_reason == "early_stopping"
    last = ("train", thin.epochs_completed)
    assert last[1] < 400 and with_stats(chosen) == [last] and not late
    assert chosen[last].layer_stats == every[last].layer_stats


def cancels_after(calls: int):
    """should_stop answering "cancelled" from its `calls`-th call on."""
    count = [0]

    def should_stop():
        count[0] += 1
        return "cancelled" if count[0] >= calls else None
    return should_stop


@pytest.mark.parametrize("name", sorted(SETUPS))
@pytest.mark.parametrize("within", [False, True])
def test_a_cancelled_phase_hands_its_last_epochs_statistics_late(
        xor_data, name, within, monkeypatch):
    """Cancelled at an epoch's end (the epoch stays), or within the next (rolled back): the
    last reported epoch's statistics come through on_stats, as every-epoch statistics."""
    p = plan(xor_data, name)
    every, _, _ = run(xor_data, p)
    if within:                                    # every poll asks, mid-epoch ones too
        monkeypatch.setattr(driver, "POLL_INTERVAL_S", 0.0)
    chosen, late, thin = run(xor_data, p, stats_epochs=every_third,
                             should_stop=cancels_after(5 if within else 4))
    assert thin.stop_reason == "cancelled"
    # within: polled mid-epoch where an epoch has 16 batches or more (not "buffers": 10),
    # so the 5th poll is within epoch 3, which is rolled back
    assert len(chosen) == (2 if within and name != "buffers" else 5 if within else 4)
    last = list(chosen)[-1]
    assert last in every and (last[1] % 3 == 0) == bool(chosen[last].layer_stats)
    if last[1] % 3:
        assert [(r.phase, r.epoch) for r in late] == [last]
        assert late[0].layer_stats == every[last].layer_stats
        assert late[0].train_loss == chosen[last].train_loss
    else:
        assert not late


@pytest.mark.parametrize("engine", ["auto", "reference"])
def test_a_diverged_run_hands_the_last_good_epochs_statistics_late(xor_data, engine):
    p = plan_for([dense(4, "relu"), dense(1, "linear")],
                 {"epochs": 50, "seed": 0, "batch_size": None, "engine": engine,
                  "optimizer": {"type": "sgd", "learning_rate": 1.0}}, *xor_data)
    every, _, full = run(xor_data, p)
    assert full.stop_reason == "diverged" and full.epochs_completed > 1
    last = ("train", full.epochs_completed)
    chosen, late, thin = run(xor_data, p, stats_epochs=lambda e: e == 1)
    assert thin.stop_reason == "diverged" and with_stats(chosen) == [("train", 1)]
    assert [(r.phase, r.epoch) for r in late] == [last]
    # bit for bit (repr: NaN, the gradients' at these weights, equals itself)
    assert repr(late[0].layer_stats) == repr(every[last].layer_stats)


@pytest.mark.parametrize("name", ["kernel", "reference", "pretraining"])
def test_a_resumed_run_with_chosen_epochs_is_bit_identical(xor_data, name):
    p = plan(xor_data, name, epochs=12)
    every, _, full = run(xor_data, p)
    saved = {}
    run(xor_data, p, stats_epochs=every_third, checkpoint_every=4,
        on_checkpoint=lambda e, b: saved.update({e: b}))
    resumed, late, again = run(xor_data, p, stats_epochs=every_third,
                               resume=saved[4])
    assert list(resumed) == [("train", e) for e in range(5, 13)] and not late
    assert with_stats(resumed) == [("train", e) for e in (6, 9, 12)]
    assert all(resumed[k].layer_stats == every[k].layer_stats for k in with_stats(resumed))
    assert same_weights(again.weights, full.weights) and again.metrics == full.metrics



@pytest.mark.parametrize("shape", [(300, 10), (40, 7, 5), (50, 2)])
def test_cross_entropy_metrics_in_one_pass_match_argmax(shape):
    """The epoch's loss and accuracy from one shifted copy of z equal log-sum-exp and argmax
    (first of tied maxima) on the same numbers: ties, NaN rows and labels per step too."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, shape[-1], shape[:-1])
    flat = z.reshape(-1, shape[-1])
    for cut in (None, "ties", "nan"):
        if cut == "ties":
            flat[::3] = np.round(flat[::3])               # many rows with two equal maxima
            flat[1::7] = 0.0
        if cut == "nan":
            flat[5, 1] = np.nan
        loss, acc = metrics("cross_entropy", "softmax", z, t, t)
        zs = flat - flat.max(axis=1, keepdims=True)
        ref = np.mean(np.log(np.exp(zs).sum(axis=1)) - zs[np.arange(len(zs)), t.reshape(-1)])
        assert loss == pytest.approx(float(ref), rel=1e-6, nan_ok=True)
        assert acc == np.count_nonzero(z.argmax(axis=-1) == t) / t.size
