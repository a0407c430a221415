"""Optimisers, updating parameters in place. `step` consumes (overwrites) the grads it is given.

- sgd: w <- w - rho g (the textbook's rule); with momentum mu: v <- mu v + g, w <- w - rho v;
  Nesterov: w <- w - rho (g + mu v) (the PyTorch formulation).
- adam: Kingma & Ba with bias correction.
- weight_decay lambda (L2): g <- g + lambda W for every weight array (dense and conv2d W,
  recurrent Wx and Wh, embedding E, attention and feed-forward matrices; each layer's
  decayed() says which), never for biases or layer norm's gamma and beta, i.e. the loss gets
  + lambda/2 ||W||^2 (added to the gradient only; reported losses exclude it).
- lr_schedule per epoch e (from 1): step: rho gamma^floor((e-1)/step_size);
  exponential: rho gamma^(e-1).
"""
import numpy as np

Weights = list[dict[str, np.ndarray]]


def learning_rate(training: dict, epoch: int) -> float:
    """The learning rate of epoch `epoch` (numbered from 1)."""
    lr = training["optimizer"]["learning_rate"]
    sched = training["lr_schedule"]
    if sched is None:
        return lr
    if sched["type"] == "step":
        return lr * sched["gamma"] ** ((epoch - 1) // sched["step_size"])
    return lr * sched["gamma"] ** (epoch - 1)


class Optimizer:
    """Base: keeps per-parameter state arrays named 'slot.layer.key' for checkpoints."""

    def __init__(self, spec: dict, weight_decay: float,
                 decay_keys: list[tuple[str, ...]] | None = None) -> None:
        self.spec = spec
        self.weight_decay = weight_decay
        self.decay_keys = decay_keys                 # per layer; None: the key "W" only
        self.t = 0                                   # number of steps taken
        self.slots: dict[str, np.ndarray] = {}

    def _slot(self, name: str, like: np.ndarray) -> np.ndarray:
        s = self.slots.get(name)
        if s is None:
            s = self.slots[name] = np.zeros_like(like)
        return s

    def step(self, params: Weights, grads: Weights, lr: float) -> None:
        self.t += 1
        for i, (p, g) in enumerate(zip(params, grads)):
            for key, gk in g.items():
                if self.weight_decay and (key in self.decay_keys[i] if self.decay_keys
                                          is not None else key == "W"):
                    gk += self.weight_decay * p[key]
                self._update(f"{i}.{key}", p[key], gk, lr)

    def _update(self, name: str, w: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        out = {f"slot.{k}": v for k, v in self.slots.items()}
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.slots = {k[5:]: v.copy() for k, v in state.items() if k.startswith("slot.")}


class SGD(Optimizer):
    def step(self, params: Weights, grads: Weights, lr: float) -> None:
        if self.spec["momentum"] or self.weight_decay:
            return super().step(params, grads, lr)
        self.t += 1
        for p, g in zip(params, grads):                # plain SGD: w <- w - rho g
            for key, gk in g.items():
                gk *= lr
                p[key] -= gk

    def _update(self, name, w, g, lr):
        mu = self.spec["momentum"]
        if mu:
            v = self._slot("v." + name, w)
            v *= mu
            v += g                                   # v <- mu v + g
            if not self.spec["nesterov"]:
                w -= lr * v                          # (never scale v itself in place)
                return
            g += mu * v                              # Nesterov look-ahead: g + mu v
        g *= lr
        w -= g


class Adam(Optimizer):
    def _update(self, name, w, g, lr):
        b1, b2, eps = self.spec["beta1"], self.spec["beta2"], self.spec["eps"]
        m = self._slot("m." + name, w)
        v = self._slot("v." + name, w)
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        m_hat = m / (1.0 - b1 ** self.t)             # bias corrections
        v_hat = v / (1.0 - b2 ** self.t)
        w -= lr * m_hat / (np.sqrt(v_hat) + eps)


def make_optimizer(training: dict, decay_keys: list[tuple[str, ...]] | None = None
                   ) -> Optimizer:
    """decay_keys: per layer, the arrays weight decay applies to (None: every "W")."""
    spec = training["optimizer"]
    cls = SGD if spec["type"] == "sgd" else Adam
    return cls(spec, training["weight_decay"], decay_keys)
