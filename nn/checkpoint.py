"""Checkpoint bytes: an npz (allow_pickle=False) with the weights, the optimizer's state, the
best weights, during pretraining the current decoder, and a JSON "meta" (uint8 UTF-8): the
epoch, the pretraining epoch, early-stopping counters, the last epoch's metrics and a
fingerprint of the plan and data, so a resume can refuse a mismatch.
"""
import io
import json
from dataclasses import dataclass, field

import numpy as np

from .network import Weights

FORMAT = 1


@dataclass
class TrainState:
    """Everything the loop carries from one epoch to the next."""
    epoch: int                                     # last completed epoch (0 = none)
    params: Weights
    opt_state: dict[str, np.ndarray] = field(default_factory=dict)
    best_value: float | None = None                # monitored loss at best_epoch
    best_epoch: int | None = None
    best_params: Weights | None = None
    wait: int = 0                                  # epochs since the last improvement
    last: dict = field(default_factory=dict)       # the last epoch's losses and accuracies
    stop_reason: str | None = None                 # set when the loop ended by itself
    pretrain_epoch: int = 0                        # last completed pretraining epoch
    decoder: dict[str, np.ndarray] | None = None   # the autoencoder's, within a layer


def _flat(prefix: str, w: Weights) -> dict[str, np.ndarray]:
    return {f"{prefix}.{i}.{k}": v for i, p in enumerate(w) for k, v in p.items()}


def _unflat(prefix: str, arrays: dict, n_layers: int) -> Weights:
    w: Weights = [{} for _ in range(n_layers)]
    for name, a in arrays.items():
        if name.startswith(prefix + "."):
            _, i, key = name.split(".")
            w[int(i)][key] = a
    return w


def dump(state: TrainState, fingerprint: str) -> bytes:
    arrays = _flat("params", state.params)
    if state.best_params is not None:
        arrays.update(_flat("best", state.best_params))
    if state.decoder is not None:
        arrays.update(_flat("decoder", [state.decoder]))
    arrays.update({f"opt.{k}": v for k, v in state.opt_state.items()})
    meta = {"format": FORMAT, "fingerprint": fingerprint, "epoch": state.epoch,
            "best_value": state.best_value, "best_epoch": state.best_epoch,
            "has_best": state.best_params is not None, "wait": state.wait,
            "last": state.last, "stop_reason": state.stop_reason, "n_layers": len(state.params),
            "pretrain_epoch": state.pretrain_epoch}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read(b: bytes) -> tuple[dict, dict]:
    try:
        with np.load(io.BytesIO(b), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except MemoryError:
        raise
    except Exception as e:
        raise ValueError(f"resume: not a checkpoint ({e!r})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError("resume: unknown checkpoint format")
    return arrays, meta


def position(b: bytes) -> tuple[str, int]:
    """Where a checkpoint was taken: ("train", epoch), or ("pretrain", pretraining epoch)
    for one taken during pretraining (no training epoch completed yet). ValueError if junk."""
    _, meta = _read(b)
    if meta["epoch"] == 0 and meta.get("pretrain_epoch", 0) > 0:
        return "pretrain", meta["pretrain_epoch"]
    return "train", meta["epoch"]


def load(b: bytes, fingerprint: str) -> TrainState:
    """ValueError when the bytes are not a checkpoint of this plan and data."""
    arrays, meta = _read(b)
    if meta["fingerprint"] != fingerprint:
        raise ValueError("resume: the checkpoint was made for another plan or data set")
    n = meta["n_layers"]
    return TrainState(
        epoch=meta["epoch"], params=_unflat("params", arrays, n),
        opt_state={k[4:]: v for k, v in arrays.items() if k.startswith("opt.")},
        best_value=meta["best_value"], best_epoch=meta["best_epoch"],
        best_params=_unflat("best", arrays, n) if meta["has_best"] else None,
        wait=meta["wait"], last=meta["last"], stop_reason=meta["stop_reason"],
        pretrain_epoch=meta.get("pretrain_epoch", 0),
        decoder=_unflat("decoder", arrays, 1)[0] or None)
