"""nn/__init__.py: the names the service and the README use."""


def test_public_api():
    import nn
    assert set(nn.__all__) >= {"SpecError", "generate", "DataInfo", "describe", "build", "Plan",
                               "train", "EpochReport", "TrainResult", "Weights", "Model",
                               "weights_to_json", "weights_from_json", "checkpoint_position"}
