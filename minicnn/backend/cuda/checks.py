"""Input checks of the CUDA backend's primitives: every launch first validates its inputs and
raises ``ValueError`` with a one-line message (never launches) for a wrong dtype (float32 /
float64 only, all operands alike), inconsistent shapes, or sizes whose 32-bit index
arithmetic could overflow; inputs that are not C-contiguous are made so (for the in-place
optimizer updates, whose arrays must be updated where they are, a non-contiguous parameter
or state is an error)."""
import numpy as np

from . import runtime

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
SCALAR = {"f32": np.float32, "f64": np.float64}

# Kernels index with 32-bit ints; leave room for one tile (<= 256) of overhang past the end.
INDEX_LIMIT = 2**31 - 2**16


def i32(v):
    """A kernel's ``int`` argument."""
    return np.int32(v)


def suffix(op, dtype, what):
    """The kernels' name suffix of ``dtype`` (``"f32"`` or ``"f64"``)."""
    try:
        return SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"{op}: {what} must be float32 or float64, got dtype {dtype}") from None


def device_array(a):
    """``a`` as a CuPy array (a host array or number is copied to the GPU)."""
    if not isinstance(a, runtime.cupy.ndarray):
        a = runtime.cupy.asarray(a)
    return a


def contiguous(a):
    """``a`` C-contiguous (a copy only if needed), keeping its shape (also a 0-d shape, which
    ``ascontiguousarray`` may turn into 1-d)."""
    c = runtime.cupy.ascontiguousarray(a)
    return c if c.shape == a.shape else c.reshape(a.shape)


def operand(op, a, what, dtype=None):
    """A read-only float operand: a C-contiguous CuPy array of ``dtype`` (if given)."""
    a = device_array(a)
    suffix(op, a.dtype, what)
    if dtype is not None and a.dtype != dtype:
        raise ValueError(f"{op}: {what} has dtype {a.dtype} but the other operands have {dtype}")
    return contiguous(a)


def inplace(op, a, what, like=None):
    """An array a kernel updates in place: must already be a contiguous CuPy float array."""
    if not isinstance(a, runtime.cupy.ndarray):
        raise ValueError(f"{op}: {what} must be a CuPy array (it is updated in place), "
                         f"got {type(a).__name__}")
    suffix(op, a.dtype, what)
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {what} (shape {a.shape}) must be C-contiguous: it is updated "
                         "in place")
    if like is not None and (a.shape != like.shape or a.dtype != like.dtype):
        raise ValueError(f"{op}: {what} has shape {a.shape} and dtype {a.dtype}, expected "
                         f"{like.shape} and {like.dtype} like the parameter")
    return a


def ndim(op, a, n, what, layout):
    if a.ndim != n:
        raise ValueError(f"{op}: {what} must be {n}-D {layout}, got shape {a.shape}")


def pair(op, value, what, minimum):
    """``value`` as two ints, each at least ``minimum``."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {what} must be a pair of ints, got {value!r}") from None
    if min(a, b) < minimum:
        raise ValueError(f"{op}: {what} must be >= {minimum}, got {(a, b)}")
    return a, b


def index_range(op, desc, **extents):
    """Refuse a launch whose index arithmetic could overflow a 32-bit int."""
    for what, v in extents.items():
        if v >= INDEX_LIMIT:
            raise ValueError(f"{op}: {desc} is too large for the kernels' 32-bit index "
                             f"arithmetic ({what} = {v} >= {INDEX_LIMIT})")


def grid(op, desc, g):
    """Refuse a grid beyond CUDA's limits."""
    if g[0] > 2**31 - 1 or g[1] > 65535 or g[2] > 65535:
        raise ValueError(f"{op}: {desc} needs a grid {g} beyond CUDA's limits")


def conv_params(op, stride, padding):
    """``(sH, sW), (pH, pW)``: stride >= 1, padding >= 0."""
    return pair(op, stride, "stride", 1), pair(op, padding, "padding", 0)


def conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo):
    """Refuse a convolution whose tensors or padded sizes overflow the 32-bit indices."""
    index_range(op, desc, x_size=N * C * H * W, w_size=O * C * kH * kW,
                y_size=N * O * Ho * Wo, padded_height_plus_stride=H + 2 * pH + sH,
                padded_width_plus_stride=W + 2 * pW + sW)


def bias(op, b, channels, dtype):
    """A bias operand: None, or a (channels,) array of ``dtype`` (ValueError otherwise)."""
    if b is None:
        return None
    b = operand(op, b, "bias", dtype)
    if b.shape != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},), got {b.shape}")
    return b
