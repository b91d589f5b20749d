"""The convolution primitives: kernels/conv.cu launched on CuPy arrays.

=====================================  ==========================================
primitive                              kernel(s) (``<name>_<tile>_<f32|f64>`` or ``<name>_tf32``)
=====================================  ==========================================
conv2d_forward                         conv2d_forward_<tile>  (bias fused)
conv2d_backward_input                  conv2d_backward_input_<tile>, or
                                       conv2d_backward_input_partition_<tile> when the
                                       windows partition the input (up-convolution)
conv2d_backward_weight                 conv2d_backward_weight_<tile> + splitk_reduce
=====================================  ==========================================

The tile, grid and K slices come from ``planner.plan_gemm``; the build (which features, so
which tiles) from ``config.current()``. So do three untimed changes (``config.UNTIMED``), off
unless named, each beside the path the H200 timed:

* ``conv_relu``: ``relu=True`` applied in the forward kernel's store (off: a ReLU launch);
* ``upconv_bias``: the input gradient's ``bias`` added in its kernel's store (off: a CuPy
  broadcast add after it);
* ``narrow_1x1``: 1x1 / stride 1 / unpadded convolutions of at most NARROW_MAX channels (the
  head) on per-pixel kernels, ``conv1x1_forward``, ``conv1x1_backward_input``,
  ``conv1x1_backward_weight`` + splitk_reduce (``planner.narrow_1x1``; off: the GEMMs).

With ``CudaConfig(precision="tf32")`` every float32 GEMM runs instead on the tensor cores:
the kernel of the same name and parameters in kernels/conv_tf32.cu, ``<name>_tf32``, one
tile (``planner.plan_tf32``), operands rounded to TF32; narrow_1x1 does not apply (its
kernels are fp32). float64 is never rounded.
"""
import numpy as np

from . import checks, config, ops, planner, runtime
from .checks import i32


def _sliced(out, slices):
    """The workspace of ``slices`` partial sums of ``out`` (``out`` itself for one)."""
    return out if slices == 1 else runtime.cupy.empty((slices,) + out.shape, dtype=out.dtype)


def _add_slices(ws, out, slices, sfx):
    """``out = ws[0] + ws[1] + ...`` in order (splitk_reduce; nothing to do for one slice)."""
    if slices > 1:
        runtime.launch_1d(runtime.kernel("conv", f"splitk_reduce_{sfx}"), out.size,
                         (ws, out, i32(slices), np.int64(out.size)))
    return out


def _shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo):
    return tuple(i32(v) for v in (N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo))


def _tensor_cores(sfx):
    """Whether this convolution runs on the tensor cores: float32 with precision "tf32"."""
    return sfx == "f32" and config.current().tensor_cores


def _gemm(op, desc, name, M, Ncols, K, sfx, split_k=False):
    """The kernel ``<name>_<engine>`` of one implicit GEMM ``(M x K) * (K x Ncols)``, with its
    grid, block and K slice: ``(kernel, grid, block, k_chunk)``. The engine is the tile the
    planner picks in kernels/conv.cu, or kernels/conv_tf32.cu's (``_tensor_cores``)."""
    if _tensor_cores(sfx):
        grid, k_chunk = planner.plan_tf32(M, Ncols, K, runtime.num_sms(), split_k=split_k)
        kern, threads = runtime.kernel("conv_tf32", f"{name}_tf32"), planner.TF32_THREADS
    else:
        tile, grid, k_chunk = planner.plan_gemm(M, Ncols, K, sfx, runtime.num_sms(),
                                                split_k=split_k,
                                                tiles=config.current().has("tiles"))
        kern, threads = runtime.kernel("conv", f"{name}_{tile}_{sfx}"), planner.tile_threads(tile)
    checks.grid(op, desc, grid)
    return kern, grid, (threads,), k_chunk


def _narrow(kH, kW, sH, sW, pH, pW, channels, sfx):
    """Whether the narrow 1x1 kernels take this convolution (only with ``narrow_1x1`` on, and
    not on the tensor cores)."""
    return (config.current().tries("narrow_1x1") and not _tensor_cores(sfx)
            and planner.narrow_1x1(kH, kW, sH, sW, pH, pW, channels))


def conv2d_forward(x, w, b, stride, padding, relu=False):
    """``y = W * x + b`` (cross-correlation). x ``(N,C,H,W)``, w ``(O,C,kH,kW)`` -> ``(N,O,Ho,Wo)``.
    With ``relu``, ``max(y, 0)`` (as relu_forward, NaN kept): in the same store with the
    untimed ``conv_relu``, else by relu_forward after it."""
    if relu and not config.current().tries("conv_relu"):
        return ops.relu_forward(conv2d_forward(x, w, b, stride, padding))
    op = "conv2d_forward"
    x = checks.operand(op, x, "input")
    w = checks.operand(op, w, "weight", x.dtype)
    checks.ndim(op, x, 4, "input", "(N, C, H, W)")
    checks.ndim(op, w, 4, "weight", "(C_out, C_in, kH, kW)")
    (sH, sW), (pH, pW) = checks.conv_params(op, stride, padding)
    N, C, H, W = x.shape
    O, Cw, kH, kW = w.shape
    if C != Cw:
        raise ValueError(f"{op}: input {x.shape} has {C} channels, weight {w.shape} expects {Cw}")
    b = checks.bias(op, b, O, x.dtype)
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {kH}x{kW} is larger than the padded input "
                         f"{H + 2 * pH}x{W + 2 * pW} (input {x.shape}, padding {(pH, pW)})")
    desc = f"input {x.shape} with weight {w.shape}"
    checks.conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)
    sfx = checks.suffix(op, x.dtype, "input")
    y = runtime.cupy.empty((N, O, Ho, Wo), dtype=x.dtype)
    if y.size == 0:
        return y
    if _narrow(kH, kW, sH, sW, pH, pW, O, sfx):
        runtime.launch_1d(runtime.kernel("conv", f"conv1x1_forward_{sfx}"), N * H * W,
                         (x, w, w if b is None else b, i32(b is not None), i32(bool(relu)), y,
                          i32(N), i32(C), i32(O), i32(H * W)))
        return y
    kern, grid, block, _ = _gemm(op, desc, "conv2d_forward", O, N * Ho * Wo, C * kH * kW, sfx)
    kern(grid, block,
         (x, w, w if b is None else b, y, i32(b is not None), i32(bool(relu)),
         *_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)))
    return y


def conv2d_backward_input(gy, w, x_shape, stride, padding, bias=None):
    """``dL/dx[n,c,h,v] = sum_{o,i,j} W[o,c,i,j] gy[n,o,p,q]`` over the (p, q) with
    ``h + pH = p*sH + i`` and ``v + pW = q*sW + j`` (col2im, computed as a gather), plus
    ``bias[c]`` when given (the transposed convolution's forward): in the same store with the
    untimed ``upconv_bias``, else by a CuPy broadcast add after it."""
    op = "conv2d_backward_input"
    gy = checks.operand(op, gy, "output gradient")
    w = checks.operand(op, w, "weight", gy.dtype)
    checks.ndim(op, gy, 4, "output gradient", "(N, C_out, Ho, Wo)")
    checks.ndim(op, w, 4, "weight", "(C_out, C_in, kH, kW)")
    (sH, sW), (pH, pW) = checks.conv_params(op, stride, padding)
    try:
        N, C, H, W = (int(v) for v in x_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: x_shape must be (N, C, H, W), got {x_shape!r}") from None
    O, Cw, kH, kW = w.shape
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    if Cw != C or gy.shape != (N, O, Ho, Wo):
        raise ValueError(f"{op}: output gradient {gy.shape}, weight {w.shape} and input shape "
                         f"{(N, C, H, W)} do not match (stride {(sH, sW)}, padding "
                         f"{(pH, pW)}: expected output gradient {(N, O, Ho, Wo)})")
    bias = checks.bias(op, bias, C, gy.dtype)
    if bias is not None and not config.current().tries("upconv_bias"):
        gx = conv2d_backward_input(gy, w, x_shape, stride, padding)
        gx += bias.reshape(1, C, 1, 1)
        return gx
    desc = f"input {(N, C, H, W)} with weight {w.shape}"
    checks.conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)
    sfx = checks.suffix(op, gy.dtype, "output gradient")
    gx = runtime.cupy.empty((N, C, H, W), dtype=gy.dtype)
    if gx.size == 0:
        return gx
    if _narrow(kH, kW, sH, sW, pH, pW, O, sfx):
        runtime.launch_1d(runtime.kernel("conv", f"conv1x1_backward_input_{sfx}"), N * H * W,
                         (gy, w, gy if bias is None else bias, i32(bias is not None), gx,
                          i32(N), i32(C), i32(O), i32(H * W)))
        return gx
    if planner.window_partition(kH, kW, sH, sW, pH, pW, H, W, Ho, Wo):
        # Each input pixel lies in exactly one window (the U-Net's 2x2/2 up-convolution): a
        # dense GEMM over the output pixels whose epilogue scatters into gx ("pixel shuffle").
        kern, grid, block, _ = _gemm(op, desc, "conv2d_backward_input_partition", C * kH * kW,
                                     N * Ho * Wo, O, sfx)
    else:
        kern, grid, block, _ = _gemm(op, desc, "conv2d_backward_input", C, N * H * W,
                                     O * kH * kW, sfx)
    kern(grid, block,
         (gy, w, gx, gx if bias is None else bias, i32(bias is not None),
         *_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)))
    return gx


def conv2d_backward_weight(gy, x, w_shape, stride, padding):
    """``dL/dW[o, c, i, j] = sum_{n,p,q} gy[n, o, p, q] * x_pad[n, c, p*sH + i, q*sW + j]``."""
    op = "conv2d_backward_weight"
    gy = checks.operand(op, gy, "output gradient")
    x = checks.operand(op, x, "input", gy.dtype)
    checks.ndim(op, gy, 4, "output gradient", "(N, C_out, Ho, Wo)")
    checks.ndim(op, x, 4, "input", "(N, C_in, H, W)")
    (sH, sW), (pH, pW) = checks.conv_params(op, stride, padding)
    try:
        O, C, kH, kW = (int(v) for v in w_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: w_shape must be (C_out, C_in, kH, kW), got {w_shape!r}") from None
    N, Cx, H, W = x.shape
    Ho, Wo = (H + 2 * pH - kH) // sH + 1, (W + 2 * pW - kW) // sW + 1
    if Cx != C or gy.shape != (N, O, Ho, Wo) or min(kH, kW) < 1:
        raise ValueError(f"{op}: output gradient {gy.shape}, input {x.shape} and weight shape "
                         f"{(O, C, kH, kW)} do not match (stride {(sH, sW)}, padding "
                         f"{(pH, pW)}: expected output gradient {(N, O, Ho, Wo)})")
    desc = f"input {x.shape} with weight {(O, C, kH, kW)}"
    checks.conv_sizes(op, desc, N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)
    sfx = checks.suffix(op, gy.dtype, "output gradient")
    gw = runtime.cupy.empty((O, C, kH, kW), dtype=gy.dtype)
    if gw.size == 0:
        return gw
    if _narrow(kH, kW, sH, sW, pH, pW, O, sfx):
        return _narrow_weight(op, desc, gy, x, gw, sfx)
    kern, grid, block, k_chunk = _gemm(op, desc, "conv2d_backward_weight", O, C * kH * kW,
                                       N * Ho * Wo, sfx, split_k=True)
    splits = grid[2]
    checks.index_range(op, desc, split_k_workspace=splits * gw.size,
                       split_k_range=splits * k_chunk + 256)
    ws = _sliced(gw, splits)
    kern(grid, block,
         (gy, x, ws, i32(k_chunk), *_shape_args(N, C, H, W, O, kH, kW, sH, sW, pH, pW, Ho, Wo)))
    return _add_slices(ws, gw, splits, sfx)


def _narrow_weight(op, desc, gy, x, gw, sfx):
    """The weight gradient of a narrow 1x1 convolution (``planner.narrow_1x1``): per-chunk
    sums of ``gy[n, o, s] x[n, c, s]`` over the pixels (conv1x1_backward_weight), then the
    chunks added in order (splitk_reduce)."""
    N, C, H, W = x.shape
    O = gy.shape[1]
    groups = planner.cdiv(C, planner.NARROW_MAX)
    chunks, length = planner.narrow_weight_chunks(N * H * W, groups, runtime.num_sms())
    checks.grid(op, desc, (chunks, groups, 1))
    checks.index_range(op, desc, narrow_workspace=chunks * O * C)
    ws = _sliced(gw, chunks)
    runtime.kernel("conv", f"conv1x1_backward_weight_{sfx}")(
        (chunks, groups), (planner.NARROW_THREADS,),
        (gy, x, ws, i32(N), i32(C), i32(O), i32(H * W), i32(length)))
    return _add_slices(ws, gw, chunks, sfx)
