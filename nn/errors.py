"""The engine's one error type for bad specs, data, generator arguments and weights."""


class SpecError(ValueError):
    """A bad field, named by its JSON path from the request body's root.

    >>> str(SpecError("network.layers[1].units", "must be >= 1"))
    'network.layers[1].units: must be >= 1'
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
