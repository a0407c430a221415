"""nn/stats.py: the statistics' definitions, and the vectorised statistics step against
NumPy array by array."""
import numpy as np
import pytest

from nn.stats import activation_stats


def test_activation_statistics_definitions():
    sig = activation_stats(np.array([[0.005, 0.5, 0.995, 0.98]]), "sigmoid")
    assert sig == {"act_mean": pytest.approx(0.62), "act_saturated_fraction": 0.5,
                   "act_dead_fraction": None}
    tanh = activation_stats(np.array([[-0.995, 0.0, 0.5, 0.999]]), "tanh")
    assert tanh["act_saturated_fraction"] == 0.5 and tanh["act_dead_fraction"] is None
    relu = activation_stats(np.array([[0.0, 0.0, 1e-9, 2.0]]), "relu")
    assert relu["act_dead_fraction"] == 0.5 and relu["act_saturated_fraction"] is None
    lin = activation_stats(np.array([[-1.0, 1.0]]), "linear")
    assert lin == {"act_mean": 0.0, "act_saturated_fraction": None, "act_dead_fraction": None}


def _direct(x: np.ndarray) -> list[float]:
    x = x.astype(np.float64).ravel()
    return [np.abs(x).mean(), np.linalg.norm(x), np.abs(x).max(), x.std()]


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layer_stats_match_numpy_on_each_array(dtype, one_pass, monkeypatch):
    """The vectorised statistics step against numpy, array by array and row by row: a row of
    several weight arrays (attention's Wq, Wk, Wv, Wo together), a constant array (std exactly
    0), one whose mean dwarfs its spread (where sum x^2 - n mean^2 cancels), one number; with
    the two-pass std of small nets and the one-pass std of large ones."""
    import nn
    import nn.stats
    from nn.stats import GRAD_KEYS, PARAM_FIELDS, WEIGHT_KEYS, LayerStats
    monkeypatch.setattr(nn.stats, "ONE_PASS", 0 if one_pass else 1 << 30)
    plan = nn.build({"layers": [{"type": "self_attention"}, {"type": "sequence_pool"},
                                {"type": "dense", "units": 1}]},
                    {"loss": "squared_error"},
                    nn.DataInfo((3, 4), 10, "classification", [0, 1], 1))
    layers = list(plan.layers)
    rng = np.random.default_rng(0)
    params = nn.network.init_params(layers, rng, dtype)
    params[0]["bq"][:] = 5.0
    params[2]["W"] += dtype(1e4)
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in p.items()} for p in params]
    outputs = [rng.normal(size=(6, 3, 4)).astype(dtype), None, rng.random((6, 1)).astype(dtype)]
    stats = LayerStats(layers)
    for _ in range(2):                                  # the buffers are reused
        rows = stats(params, grads, outputs, [None] * 3)
    attention, dense = rows
    assert [attention["name"], dense["name"]] == ["self_attention_0", "dense_2"]
    together = lambda p, keys: np.concatenate([p[k].ravel() for k in keys])
    keys = ("Wq", "Wk", "Wv", "Wo")
    for row, i, expect_w, expect_g in ((attention, 0, together(params[0], keys),
                                        together(grads[0], keys)),
                                       (dense, 2, params[2]["W"], grads[2]["W"])):
        assert [row[k] for k in WEIGHT_KEYS] == pytest.approx(_direct(expect_w), rel=1e-12)
        assert [row[k] for k in GRAD_KEYS] == pytest.approx(_direct(expect_g), rel=1e-12)
        assert [p["param"] for p in row["params"]] == list(params[i])
        for entry in row["params"]:
            assert tuple(entry) == PARAM_FIELDS
            key = entry["param"]
            assert [entry[k] for k in WEIGHT_KEYS] == pytest.approx(_direct(params[i][key]),
                                                                    rel=1e-12)
            assert [entry[k] for k in GRAD_KEYS] == pytest.approx(_direct(grads[i][key]),
                                                                  rel=1e-12)
        assert row["act_mean"] == pytest.approx(float(outputs[i].astype(float).mean()))
    assert {p["param"]: p for p in attention["params"]}["bq"]["weight_std"] == 0
    assert dense["params"][1]["weight_std"] == 0                       # b: one number
    perceptron = stats(params, None, outputs, [None] * 3)
    assert perceptron[1]["grad_norm"] is None
    assert perceptron[1]["weight_std"] == dense["weight_std"]
