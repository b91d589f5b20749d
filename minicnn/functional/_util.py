"""Small helpers shared by the ops: argument checks and turning operands into Tensors."""
import numpy as np

from ..tensor import Tensor


def as_tensor(x, like):
    """``x`` as a Tensor on ``like``'s device; Python numbers take ``like``'s dtype."""
    if isinstance(x, Tensor):
        return x
    xp = like.backend.xp
    if isinstance(x, (int, float, bool)):
        return Tensor(xp.asarray(x, dtype=like.dtype))
    return Tensor(x)


def same_device(*tensors):
    """Raise a clear error if the tensors live on different devices."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        shown = ", ".join(f"{t.shape} on {t.device}" for t in tensors)
        raise ValueError(f"tensors are on different devices: {shown}; move them with .to()")
    return tensors[0].backend


def pair(value, name):
    """``value`` as a pair of ints (an int ``k`` means ``(k, k)``)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and \
            all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_float(t, name):
    if t.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")


def check_rank(t, rank, name, layout):
    if t.ndim != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {t.shape}")
