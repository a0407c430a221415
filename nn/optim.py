"""Optimisers, updating flat parameters in place (step_flat consumes the gradients).

- sgd: w <- w - rho g (the textbook's rule); momentum mu: v <- mu v + g, w <- w - rho v;
  Nesterov: w <- w - rho (g + mu v) (the PyTorch formulation).
- adam: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
  w <- w - rho m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).
- weight_decay lambda (L2): g <- g + lambda W for the arrays each layer's decayed() names,
  never biases or layer norm's gamma and beta (reported losses exclude the penalty).
- lr_schedule per epoch e (from 1): step: rho gamma^floor((e-1)/step_size);
  exponential: rho gamma^(e-1).
- Every FLUSH_EVERY steps, slot values below FLUSH_BELOW x the dtype's smallest normal
  number become 0: a dead unit's slots otherwise decay into the subnormals, where x86
  multiplies some 35 times slower (bench/README.md); steps that small round away anyway.
"""
import numpy as np

Weights = list[dict[str, np.ndarray]]
FLUSH_EVERY = 64
FLUSH_BELOW = 2.0 ** 32


def learning_rate(training: dict, epoch: int) -> float:
    """The learning rate of epoch `epoch` (numbered from 1)."""
    lr = training["optimizer"]["learning_rate"]
    sched = training["lr_schedule"]
    if sched is None:
        return lr
    if sched["type"] == "step":
        return lr * sched["gamma"] ** ((epoch - 1) // sched["step_size"])
    return lr * sched["gamma"] ** (epoch - 1)


class Flat:
    """Parameters laid end to end in one vector w, and their gradients likewise in g: the
    optimizer then updates every array with a handful of calls (step_flat) instead of a
    handful per array, a large part of a small net's step. `adopt` makes a Weights' arrays
    views of w (the caller's dicts keep working); `gather` copies layers' gradients into g.
    The optimizer's slots are laid out alike (Optimizer.step_flat)."""

    def __init__(self, like: Weights) -> None:
        self.entries: list[tuple[int, str, tuple[int, ...], slice]] = []
        n = 0
        for i, p in enumerate(like):
            for key, a in p.items():
                self.entries.append((i, key, a.shape, slice(n, n + a.size)))
                n += a.size
        self.size, self.layers = n, len(like)
        dtype = next(a.dtype for p in like for a in p.values())
        self.wg = np.empty(2 * n, dtype)           # w then g: the statistics read both
        self.w, self.g = self.wg[:n], self.wg[n:]  # in one go (nn/stats.py)
        self.params, self.grads = self.views(self.w), self.views(self.g)

    def views(self, flat: np.ndarray) -> Weights:
        out: Weights = [{} for _ in range(self.layers)]
        for i, key, shape, where in self.entries:
            out[i][key] = flat[where].reshape(shape)
        return out

    def adopt(self, params: Weights) -> None:
        """Make params' arrays views of w, copying their values in, unless they are."""
        for p, views in zip(params, self.params):
            for key, view in views.items():
                if p[key] is not view:
                    view[...] = p[key]
                    p[key] = view

    def gather(self, grads: Weights) -> None:
        np.concatenate([grads[i][key].ravel() for i, key, _, _ in self.entries], out=self.g)


class Optimizer:
    """Base: keeps per-parameter state arrays named 'slot.layer.key' for checkpoints."""
    slot_kinds: tuple[str, ...] = ()                 # the state each array has ("v", "m")

    def __init__(self, spec: dict, weight_decay: float,
                 decay_keys: list[tuple[str, ...]] | None = None) -> None:
        self.spec = spec
        self.weight_decay = weight_decay
        self.decay_keys = decay_keys                 # per layer; None: the key "W" only
        self.t = 0                                   # number of steps taken
        self.slots: dict[str, np.ndarray] = {}
        self.flat_slots: dict[str, np.ndarray] = {}  # step_flat's; self.slots hold views
        self.flat_layout: Flat | None = None         # the Flat they are laid out for

    def _slot(self, name: str, like: np.ndarray) -> np.ndarray:
        s = self.slots.get(name)
        if s is None:
            s = self.slots[name] = np.zeros_like(like)
        return s

    def _decays(self, i: int, key: str) -> bool:
        return key in self.decay_keys[i] if self.decay_keys is not None else key == "W"

    def step_flat(self, flat: Flat, lr: float) -> None:
        """One step of the parameters flat.w with gradients flat.g (consumed), a few calls
        for all the arrays at once."""
        self.t += 1
        w, g = flat.w, flat.g
        if self.weight_decay:
            for i, key, _, where in flat.entries:
                if self._decays(i, key):
                    g[where] += self.weight_decay * w[where]
        self._apply(w, g, lr, [self._flat_slot(s, flat) for s in self.slot_kinds])

    def _flat_slot(self, kind: str, flat: Flat) -> np.ndarray:
        """The flat state `kind`; the per-array slots become views of it (keeping any values
        they had, e.g. from a checkpoint), so state() still sees them."""
        s = self.flat_slots.get(kind)
        if s is None or self.flat_layout is not flat:     # first flat step, or a new layout
            self.flat_layout = flat
            s = self.flat_slots[kind] = np.zeros_like(flat.w)
            for i, key, shape, where in flat.entries:
                name = f"{kind}.{i}.{key}"
                if name in self.slots:
                    s[where] = self.slots[name].ravel()
                self.slots[name] = s[where].reshape(shape)
        return s

    def _update(self, w: np.ndarray, g: np.ndarray, lr: float, slots: list[np.ndarray]
                ) -> None:
        raise NotImplementedError

    def _apply(self, w: np.ndarray, g: np.ndarray, lr: float, slots: list[np.ndarray]
               ) -> None:
        """_update, for step and step_flat alike; every FLUSH_EVERY steps the slot values
        below the flush threshold become 0 first (the module docstring says why)."""
        if self.t % FLUSH_EVERY == 0:
            for s in slots:
                np.putmask(s, np.abs(s) < np.finfo(s.dtype).tiny * FLUSH_BELOW, 0.0)
        self._update(w, g, lr, slots)

    def state(self) -> dict[str, np.ndarray]:
        out = {f"slot.{k}": v for k, v in self.slots.items()}
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.slots = {k[5:]: v.copy() for k, v in state.items() if k.startswith("slot.")}
        self.flat_slots, self.flat_layout = {}, None


class SGD(Optimizer):
    def __init__(self, spec: dict, weight_decay: float,
                 decay_keys: list[tuple[str, ...]] | None = None) -> None:
        super().__init__(spec, weight_decay, decay_keys)
        self.slot_kinds = ("v",) if spec["momentum"] else ()

    def _update(self, w, g, lr, slots):
        mu = self.spec["momentum"]
        if mu:
            v, = slots
            v *= mu
            v += g                                   # v <- mu v + g
            if not self.spec["nesterov"]:
                np.multiply(v, lr, out=g)            # w <- w - rho v, g as scratch (never
                w -= g                               # scale v itself in place)
                return
            g += mu * v                              # Nesterov look-ahead: g + mu v
        g *= lr
        w -= g


class Adam(Optimizer):
    slot_kinds = ("m", "v")

    def _update(self, w, g, lr, slots):
        b1, b2, eps = self.spec["beta1"], self.spec["beta2"], self.spec["eps"]
        m, v = slots
        # in place, g and one array as scratch: the operations of
        #   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        #   w <- w - lr m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat likewise
        # in the same order (bit for bit the expressions'), without their seven temporaries
        tmp = np.multiply(g, 1.0 - b1)
        m *= b1
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp
        np.divide(v, 1.0 - b2 ** self.t, out=tmp)    # bias corrections
        np.sqrt(tmp, out=tmp)
        tmp += eps
        np.divide(m, 1.0 - b1 ** self.t, out=g)
        g *= lr
        g /= tmp
        w -= g


def make_optimizer(training: dict, decay_keys: list[tuple[str, ...]] | None = None
                   ) -> Optimizer:
    """decay_keys: per layer, the arrays weight decay applies to (None: every "W")."""
    spec = training["optimizer"]
    cls = SGD if spec["type"] == "sgd" else Adam
    return cls(spec, training["weight_decay"], decay_keys)
