"""build(): defaults, and a SpecError naming the JSON path for every kind of bad spec."""
import copy

import numpy as np
import pytest

import nn
from tests.nn.conftest import dense

X2, Y2 = nn.generate("xor", 40, 0, seed=0)
INFO2 = nn.describe(X2, Y2)
INFO3 = nn.describe(np.zeros((30, 2)), np.repeat([0, 1, 2], 10))
REG = nn.describe(np.zeros((10, 3)), np.zeros((10, 2)))
OK_NET = {"layers": [dense(4), dense(1)]}


def test_defaults_are_filled_in():
    plan = nn.build(OK_NET, {}, INFO2)
    t = plan.training
    assert t["algorithm"] == "backprop" and t["loss"] == "squared_error"
    assert t["optimizer"] == {"type": "sgd", "learning_rate": 0.1, "momentum": 0.0,
                              "nesterov": False}
    assert t["batch_size"] == 1 and t["shuffle"] is True and t["stats"] is True
    assert isinstance(t["seed"], int)                 # a null seed is chosen and recorded
    assert plan.network["layers"][0]["init"] == {"type": "glorot"}     # sigmoid's default
    assert plan.epochs_total == 100
    assert plan.n_params == (2 + 1) * 4 + (4 + 1) * 1
    adam = nn.build(OK_NET, {"optimizer": {"type": "adam"}}, INFO2).training["optimizer"]
    assert adam == {"type": "adam", "learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999,
                    "eps": 1e-8}


def test_build_does_not_mutate_its_arguments():
    net, training = copy.deepcopy(OK_NET), {"optimizer": {"type": "adam"}}
    nn.build(net, training, INFO2)
    assert net == OK_NET and training == {"optimizer": {"type": "adam"}}


def test_an_integer_may_be_written_as_a_float():
    """JSON has numbers only (JSON Schema's `integer` takes 1.0 too): 1.0 is read as 1."""
    plan = nn.build({"layers": [dense(3.0), dense(1)]}, {"epochs": 2.0, "batch_size": 4.0},
                    INFO2)
    units = plan.network["layers"][0]["units"]
    assert units == 3 and type(units) is int
    assert (plan.training["epochs"], plan.training["batch_size"]) == (2, 4)


def test_softmax_with_squared_error_is_allowed():
    nn.build({"layers": [dense(4), dense(3, "softmax")]}, {}, INFO3)


def test_error_message_format():
    with pytest.raises(nn.SpecError) as e:
        nn.build({"layers": [dense(4), dense(3)]}, {}, INFO2)
    assert e.value.path == "network.layers[1].units"
    assert str(e.value) == ("network.layers[1].units: the output layer has 3 units but the "
                            "data has 2 classes (or 1 unit for 2 classes)")
    assert isinstance(e.value, ValueError)


BAD = [
    # (network, training, data, path)
    ({"layers": []}, {}, INFO2, "network.layers"),
    ({"layer": [dense(1)]}, {}, INFO2, "network.layer"),
    ([dense(1)], {}, INFO2, "network"),
    ({"layers": [{"type": "conv", "units": 1}]}, {}, INFO2, "network.layers[0].type"),
    ({"layers": [{"units": 1}]}, {}, INFO2, "network.layers[0].type"),
    ({"layers": [dense(0)]}, {}, INFO2, "network.layers[0].units"),
    ({"layers": [dense(True)]}, {}, INFO2, "network.layers[0].units"),
    ({"layers": [dense(1.5)]}, {}, INFO2, "network.layers[0].units"),
    ({"layers": [dense(1, "swish")]}, {}, INFO2, "network.layers[0].activation"),
    ({"layers": [dense(1, color="red")]}, {}, INFO2, "network.layers[0].color"),
    ({"layers": [dense(4, "softmax"), dense(1)]}, {}, INFO2, "network.layers[0].activation"),
    ({"layers": [dense(1), {"type": "dropout"}]}, {}, INFO2, "network.layers[1].type"),
    ({"layers": [{"type": "dropout", "drop_prob": 1.0}, dense(1)]}, {}, INFO2,
     "network.layers[0].drop_prob"),
    ({"layers": [{"type": "dropout", "units": 3}, dense(1)]}, {}, INFO2,
     "network.layers[0].units"),
    ({"layers": [dense(1, init={"type": "orthogonal"})]}, {}, INFO2,
     "network.layers[0].init.type"),
    ({"layers": [dense(1, init={"type": "uniform", "scale": 0})]}, {}, INFO2,
     "network.layers[0].init.scale"),
    ({"layers": [dense(1, init={"type": "glorot", "scale": 1})]}, {}, INFO2,
     "network.layers[0].init.scale"),
    ({"layers": [dense(1, init={"type": "he", "distribution": "cauchy"})]}, {}, INFO2,
     "network.layers[0].init.distribution"),
    ({"layers": [dense(100_000), dense(100_000), dense(1)]}, {}, INFO2, "network.layers"),
    (OK_NET, {"learning_rate": 0.1}, INFO2, "training.learning_rate"),
    (OK_NET, [], INFO2, "training"),
    (OK_NET, {"algorithm": "genetic"}, INFO2, "training.algorithm"),
    (OK_NET, {"loss": "hinge"}, INFO2, "training.loss"),
    (OK_NET, {"optimizer": {"type": "rmsprop"}}, INFO2, "training.optimizer.type"),
    (OK_NET, {"optimizer": {"learning_rate": 0.1}}, INFO2, "training.optimizer.type"),
    (OK_NET, {"optimizer": {"type": "sgd", "learning_rate": 0}}, INFO2,
     "training.optimizer.learning_rate"),
    (OK_NET, {"optimizer": {"type": "sgd", "learning_rate": float("inf")}}, INFO2,
     "training.optimizer.learning_rate"),
    (OK_NET, {"optimizer": {"type": "sgd", "learning_rate": True}}, INFO2,
     "training.optimizer.learning_rate"),
    (OK_NET, {"optimizer": {"type": "sgd", "learning_rate": "0.1"}}, INFO2,
     "training.optimizer.learning_rate"),
    (OK_NET, {"optimizer": {"type": "sgd", "momentum": 1.0}}, INFO2,
     "training.optimizer.momentum"),
    (OK_NET, {"optimizer": {"type": "sgd", "nesterov": True}}, INFO2,
     "training.optimizer.nesterov"),
    (OK_NET, {"optimizer": {"type": "adam", "momentum": 0.9}}, INFO2,
     "training.optimizer.momentum"),
    (OK_NET, {"optimizer": {"type": "adam", "beta2": 1}}, INFO2, "training.optimizer.beta2"),
    (OK_NET, {"optimizer": {"type": "adam", "eps": 0}}, INFO2, "training.optimizer.eps"),
    (OK_NET, {"weight_decay": -1}, INFO2, "training.weight_decay"),
    (OK_NET, {"lr_schedule": {"type": "cosine"}}, INFO2, "training.lr_schedule.type"),
    (OK_NET, {"lr_schedule": {"type": "step", "step_size": 0}}, INFO2,
     "training.lr_schedule.step_size"),
    (OK_NET, {"lr_schedule": {"type": "exponential", "gamma": 1.5}}, INFO2,
     "training.lr_schedule.gamma"),
    (OK_NET, {"lr_schedule": {"type": "exponential", "step_size": 3}}, INFO2,
     "training.lr_schedule.step_size"),
    (OK_NET, {"batch_size": 0}, INFO2, "training.batch_size"),
    (OK_NET, {"batch_size": True}, INFO2, "training.batch_size"),
    (OK_NET, {"batch_size": 2.5}, INFO2, "training.batch_size"),
    (OK_NET, {"epochs": -1}, INFO2, "training.epochs"),
    (OK_NET, {"epochs": 100_001}, INFO2, "training.epochs"),
    (OK_NET, {"epochs": None}, INFO2, "training.epochs"),
    (OK_NET, {"seed": -1}, INFO2, "training.seed"),
    (OK_NET, {"seed": "1"}, INFO2, "training.seed"),
    (OK_NET, {"shuffle": 1}, INFO2, "training.shuffle"),
    (OK_NET, {"standardize": "yes"}, INFO2, "training.standardize"),
    (OK_NET, {"stats": None}, INFO2, "training.stats"),
    (OK_NET, {"dtype": "float16"}, INFO2, "training.dtype"),
    (OK_NET, {"engine": "buffers"}, INFO2, "training.engine"),
    (OK_NET, {"validation_fraction": 0.95}, INFO2, "training.validation_fraction"),
    (OK_NET, {"validation_fraction": -0.1}, INFO2, "training.validation_fraction"),
    (OK_NET, {"validation_fraction": 0.001}, INFO2, "training.validation_fraction"),
    (OK_NET, {"early_stopping": {"patience": 0}}, INFO2, "training.early_stopping.patience"),
    (OK_NET, {"early_stopping": {"min_delta": -1}}, INFO2,
     "training.early_stopping.min_delta"),
    (OK_NET, {"early_stopping": {"monitor": "val_acc"}}, INFO2,
     "training.early_stopping.monitor"),
    # output layer vs loss vs data
    (OK_NET, {"loss": "cross_entropy"}, INFO2, "network.layers[1].activation"),
    ({"layers": [dense(4), dense(2, "softmax")]}, {"loss": "cross_entropy"}, INFO3,
     "network.layers[1].units"),
    ({"layers": [dense(4), dense(1, "softmax")]}, {}, INFO2, "network.layers[1].units"),
    ({"layers": [dense(4), dense(1)]}, {}, INFO3, "network.layers[1].units"),
    ({"layers": [dense(4), dense(3)]}, {"loss": "binary_cross_entropy"}, INFO3,
     "training.loss"),
    ({"layers": [dense(4), dense(2)]}, {"loss": "binary_cross_entropy"}, INFO2,
     "network.layers[1].units"),
    ({"layers": [dense(4), dense(1, "tanh")]}, {"loss": "binary_cross_entropy"}, INFO2,
     "network.layers[1].activation"),
    ({"layers": [dense(4, init={"type": "uniform", "scale": 1e308}), dense(1)]}, {}, INFO2,
     "network.layers[0].init.scale"),
    ({"layers": [dense(4), dense(3, "linear")]}, {}, REG, "network.layers[1].units"),
    # float32 cannot hold the data (inputs or regression targets beyond ~3.4e38)
    (OK_NET, {"dtype": "float32"}, nn.describe(np.full((4, 2), 1e39), [0, 1, 0, 1]),
     "training.dtype"),
    ({"layers": [dense(1, "linear")]}, {"dtype": "float32"},
     nn.describe(np.zeros((4, 1)), np.array([0, -1e39, 2, 3.0])), "training.dtype"),
    ({"layers": [dense(4), dense(1, "softmax")]}, {},
     nn.describe(np.zeros((10, 3)), np.zeros(10)), "network.layers[1].activation"),
    ({"layers": [dense(2, "softmax")]}, {"loss": "cross_entropy"}, REG, "training.loss"),
    # step and the perceptron
    ({"layers": [dense(1, "step")]}, {}, INFO2, "network.layers[0].activation"),
    ({"layers": [dense(4, "step"), dense(1)]}, {}, INFO2, "network.layers[0].activation"),
    ({"layers": [dense(1, "sigmoid")]}, {"algorithm": "perceptron"}, INFO2, "network.layers"),
    ({"layers": [dense(4, "step"), dense(1, "step")]}, {"algorithm": "perceptron"}, INFO2,
     "network.layers"),
    ({"layers": [dense(1, "step")]}, {"algorithm": "perceptron", "batch_size": 8}, INFO2,
     "training.batch_size"),
    ({"layers": [dense(1, "step")]}, {"algorithm": "perceptron",
                                      "optimizer": {"type": "adam"}}, INFO2,
     "training.optimizer.type"),
    ({"layers": [dense(2, "step")]}, {"algorithm": "perceptron"}, REG, "training.algorithm"),
]


@pytest.mark.parametrize("network,training,data,path", BAD)
def test_bad_spec_names_the_field(network, training, data, path):
    with pytest.raises(nn.SpecError) as e:
        nn.build(network, training, data)
    assert e.value.path == path, str(e.value)
    assert str(e.value).startswith(path + ": ") and len(e.value.message) > 5


def test_validation_split_must_leave_every_class_in_training():
    info = nn.describe(np.zeros((12, 1)), [0] * 10 + [1] * 2)
    nn.build({"layers": [dense(1)]}, {"validation_fraction": 0.2}, info)  # 1 of class 1 left
    with pytest.raises(nn.SpecError, match="no training sample of class 1"):
        nn.build({"layers": [dense(1)]}, {"validation_fraction": 0.9}, info)


def test_regression_build():
    plan = nn.build({"layers": [dense(4, "tanh"), dense(2, "linear")]}, {}, REG)
    assert plan.data.task == "regression"


def test_normalised_plan_rebuilds_to_itself():
    """The worker rebuilds the plan from the stored plan.network and plan.training."""
    training = {"optimizer": {"type": "sgd", "learning_rate": 1, "momentum": 0.5},
                "lr_schedule": {"type": "step"}, "early_stopping": {},
                "validation_fraction": 0.2}
    plan = nn.build({"layers": [dense(4, init={"type": "he"}), {"type": "dropout"},
                                dense(1)]}, training, INFO2)
    again = nn.build(plan.network, plan.training, INFO2)
    assert again.network == plan.network and again.training == plan.training
    assert plan.training["optimizer"]["learning_rate"] == 1.0
    assert plan.training["lr_schedule"] == {"type": "step", "step_size": 10, "gamma": 0.5}
    assert plan.training["early_stopping"] == {"patience": 10, "min_delta": 0.0}
