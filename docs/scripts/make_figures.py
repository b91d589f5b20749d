"""Draw every figure of the documentation into docs/img/ (PNG).

    python docs/scripts/make_figures.py              # all figures
    python docs/scripts/make_figures.py relu cat     # only these

Each figure is computed with minicnn (or read from the code it illustrates: the U-Net trace,
the CUDA tile table), never drawn from numbers typed in by hand, so re-running this script
after a change to the library redraws the truth. Figures are drawn at 200 dpi, twice the
pixels of the size they are shown at, so that they stay sharp on a laptop's high-density
screen; they are saved as 256-colour PNGs (small files) and are deterministic.
"""
import io
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt                        # noqa: E402
import numpy as np                                     # noqa: E402
from matplotlib.patches import Rectangle             # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import minicnn                                         # noqa: E402
from minicnn import Tensor, functional as F, optim    # noqa: E402

IMG = os.path.join(ROOT, "docs", "img")
DPI = 200
FIGURES = {}

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": DPI,
                     "savefig.dpi": DPI, "axes.spines.top": False,
                     "axes.spines.right": False})


def figure(name):
    """Register a function that returns a matplotlib figure, saved as ``img/NAME.png``."""
    def register(fn):
        FIGURES[name] = fn
        return fn
    return register


def save(fig, name):
    """Write ``img/NAME.png`` as a 256-colour palette PNG (a third of the size, same look)."""
    from PIL import Image
    os.makedirs(IMG, exist_ok=True)
    path = os.path.join(IMG, f"{name}.png")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(path, "PNG", optimize=True)
    return path


def grid(ax, values, title=None, highlight=(), fmt="{:g}", cmap="Blues", color=None,
         vmin=None, vmax=None, hl_color="tab:orange", fontsize=9):
    """A matrix of numbers drawn as coloured cells; ``highlight``: cells to outline."""
    values = np.asarray(values, dtype=float)
    ax.imshow(values, cmap=cmap, vmin=vmin if vmin is not None else min(values.min(), 0),
              vmax=vmax if vmax is not None else max(values.max(), 1) * 1.6)
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=fontsize,
                color=color or "black")
    for r, c in highlight:
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=2.2, ec=hl_color,
                               zorder=5))
    ax.set_xticks(np.arange(values.shape[1] + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(values.shape[0] + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title)


# =========================================================================== index
@figure("phantom")
def fig_phantom():
    from cmr.phantom import make_phantom
    from cmr import CLASS_NAMES
    split = make_phantom(3, seed=1)
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9))
    colours = np.array([[0, 0, 0, 0], [0.9, 0.2, 0.2, 0.55], [0.2, 0.8, 0.2, 0.55],
                        [0.2, 0.4, 1.0, 0.55]])
    for i, ax in enumerate(axes):
        ax.imshow(split.images[i], cmap="gray")
        ax.imshow(colours[split.masks[i]])
        ax.set_axis_off()
        ax.set_title(f"{split.names[i]} (96×96)")
    handles = [Rectangle((0, 0), 1, 1, color=colours[k]) for k in (1, 2, 3)]
    fig.legend(handles, CLASS_NAMES[1:], loc="lower center", ncol=3, frameon=False)
    fig.subplots_adjust(bottom=0.12)
    return fig


# =========================================================================== autograd
def _op_name(node):
    if node.is_leaf:
        return "leaf"
    return node._backward.__qualname__.split(".")[0]


@figure("autograd_graph")
def fig_autograd_graph():
    from minicnn.tensor import _topological_order
    x = Tensor(2.0, requires_grad=True)
    w = Tensor(3.0, requires_grad=True)
    u = x * w
    v = u + x
    L = v * v
    names = {id(x): "x", id(w): "w", id(u): "u", id(v): "v", id(L): "L"}
    order = _topological_order(L)          # parents before children
    depth = {}
    for node in order:
        depth[id(node)] = 1 + max((depth[id(p)] for p in node._parents), default=-1)
    per_level = {}
    pos = {}
    for node in order:
        d = depth[id(node)]
        k = per_level.get(d, 0)
        per_level[d] = k + 1
        pos[id(node)] = (d * 2.2, -k * 1.4)
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    for node in order:
        for i, p in enumerate(node._parents):
            (x0, y0), (x1, y1) = pos[id(p)], pos[id(node)]
            if node._parents.count(p) > 1:          # the same tensor used twice: two edges
                rad = 0.5 * (i - (len(node._parents) - 1) / 2)
            elif depth[id(node)] - depth[id(p)] > 1:  # a long edge: arc over the nodes between
                rad = -0.3
            else:
                rad = 0
            ax.annotate("", xy=(x1 - 0.45, y1), xytext=(x0 + 0.45, y0),
                        arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.2,
                                        connectionstyle=f"arc3,rad={rad}"))
    backward_rank = {id(n): i + 1 for i, n in enumerate(reversed(order))}
    for node in order:
        xx, yy = pos[id(node)]
        leaf = node.is_leaf
        ax.add_patch(Rectangle((xx - 0.45, yy - 0.4), 0.9, 0.8, fc="#fde9c9" if leaf else "#d6e6f7",
                               ec="0.3"))
        label = names[id(node)] + ("" if leaf else f" = {_op_name(node)}")
        ax.text(xx, yy + 0.1, label, ha="center", va="center", fontsize=9)
        ax.text(xx, yy - 0.2, f"{node.item():g}", ha="center", va="center", fontsize=8,
                color="0.3")
        ax.text(xx + 0.45, yy + 0.48, f"#{backward_rank[id(node)]}", ha="right", fontsize=8,
                color="tab:red")
    ax.set_xlim(-0.7, max(p[0] for p in pos.values()) + 0.7)
    ax.set_ylim(min(p[1] for p in pos.values()) - 0.7, 1.6)
    ax.set_axis_off()
    ax.set_title("L = (x·w + x)²: the graph minicnn records (red: order of the backward walk)")
    return fig


# =========================================================================== ops
@figure("ops_broadcast")
def fig_ops_broadcast():
    x = Tensor(np.array([[1.0], [2.0], [3.0]]), requires_grad=True)     # (3, 1)
    y = Tensor(np.array([[10.0, 20.0, 30.0, 40.0]]), requires_grad=True)  # (1, 4)
    z = F.add(x, y)
    g = np.arange(12, dtype=float).reshape(3, 4) / 10
    z.backward(g)
    fig, axes = plt.subplots(1, 5, figsize=(9.5, 2.2),
                             gridspec_kw={"width_ratios": [1, 4, 4, 4, 1]})
    grid(axes[0], x.numpy(), "x (3,1)")
    grid(axes[1], y.numpy(), "y (1,4)")
    grid(axes[2], z.numpy(), "z = x + y (3,4)")
    grid(axes[3], g, "upstream g (3,4)", cmap="Oranges")
    grid(axes[4], x.grad, "dL/dx", cmap="Oranges")
    fig.text(0.5, -0.06, "dL/dx = g summed over the axis along which x was broadcast "
             f"(dL/dy = column sums = {np.round(y.grad[0], 1).tolist()})", ha="center")
    return fig


# =========================================================================== conv2d
CONV_X = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
CONV_W = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
CONV_B = np.array([10], dtype=np.float32)         # the bias of the page's worked example


@figure("conv2d_im2col")
def fig_conv2d_im2col():
    x, w, b = CONV_X[0, 0], CONV_W[0, 0], CONV_B[0]
    y = F.conv2d(Tensor(CONV_X), Tensor(CONV_W), Tensor(CONV_B)).numpy()[0, 0]
    cols = np.array([[x[p + i, q + j] for p in range(2) for q in range(2)]
                     for i in range(2) for j in range(2)])
    fig, axes = plt.subplots(1, 4, figsize=(9.5, 2.6), gridspec_kw={"width_ratios": [3, 2, 4, 2]})
    grid(axes[0], x, "input x (3×3)", highlight=[(0, 1), (0, 2), (1, 1), (1, 2)])
    grid(axes[1], w, "kernel w (2×2)", cmap="Greens")
    grid(axes[2], cols, "im2col: cols (K=4 × 4 windows)", highlight=[(r, 1) for r in range(4)])
    axes[2].set_xlabel("window (p,q) = (0,0) (0,1) (1,0) (1,1)")
    axes[2].tick_params(labelbottom=False)
    axes[2].set_ylabel("(i,j)")
    grid(axes[3], y, f"y = w·cols + b, b = {b:g}", highlight=[(0, 1)], cmap="Purples")
    products = " + ".join(f"{a:g}·{c:g}" for a, c in zip(w.ravel(), cols[:, 1]))
    fig.text(0.5, -0.05, f"window (0,1) [orange] becomes column 1; y[0,1] = {products} + {b:g} "
             f"= {y[0, 1]:g}", ha="center")
    return fig


@figure("conv2d_backward")
def fig_conv2d_backward():
    x = Tensor(CONV_X, requires_grad=True)
    w = Tensor(CONV_W, requires_grad=True)
    G = np.array([[[[1, 0], [2, -1]]]], dtype=np.float32)
    F.conv2d(x, w).backward(G)
    Gpad = np.pad(G[0, 0], 1)
    fig, axes = plt.subplots(1, 6, figsize=(11, 2.3),
                             gridspec_kw={"width_ratios": [2, 4, 2, 3, 3, 2]})
    grid(axes[0], G[0, 0], "G = dL/dy", cmap="Oranges", vmin=-1)
    grid(axes[1], Gpad, "G padded by k−1", cmap="Oranges", vmin=-1,
         highlight=[(0, 0), (0, 1), (1, 0), (1, 1)])
    grid(axes[2], CONV_W[0, 0, ::-1, ::-1], "w flipped", cmap="Greens")
    grid(axes[3], x.grad[0, 0], "dL/dx", cmap="Oranges", vmin=-4, highlight=[(0, 0)])
    grid(axes[4], CONV_X[0, 0], "x, G's window at (0,0)", highlight=[(0, 0), (1, 0), (1, 1)])
    grid(axes[5], w.grad[0, 0], "dL/dw", cmap="Oranges", vmin=-8, highlight=[(0, 0)])
    fig.text(0.3, -0.06, "input gradient: full correlation of G with the flipped kernel\n"
             "dL/dx[0,0] = 1·1 (the only non-zero product in the outlined window)", ha="center")
    fig.text(0.8, -0.06, "weight gradient: correlation of x with G\n"
             "dL/dw[0,0] = 1·1 + 2·4 − 1·5 = 4", ha="center")
    return fig


# =========================================================================== transposed conv
@figure("conv_transpose2d")
def fig_conv_transpose2d():
    x = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
    w = np.array([[[[1, 0.5], [0.5, 0.25]]]], dtype=np.float32)
    y = F.conv_transpose2d(Tensor(x), Tensor(w), stride=2).numpy()[0, 0]
    fig, axes = plt.subplots(1, 5, figsize=(11, 2.5),
                             gridspec_kw={"width_ratios": [2, 2, 4, 4, 5]})
    grid(axes[0], x[0, 0], "x (2×2)")
    grid(axes[1], w[0, 0], "w (2×2)", cmap="Greens")
    grid(axes[2], y, "y, k=2, s=2: 4 stamps", highlight=[(0, 2), (0, 3), (1, 2), (1, 3)])
    for k, ax in zip((3, 4), axes[3:]):
        ones = F.conv_transpose2d(Tensor(np.ones((1, 1, 3, 3), np.float32)),
                                  Tensor(np.ones((1, 1, k, k), np.float32)), stride=2)
        grid(ax, ones.numpy()[0, 0], f"stamps per pixel, k={k}, s=2", cmap="Reds", fontsize=7)
    return fig


# =========================================================================== max pool
@figure("max_pool2d")
def fig_max_pool2d():
    xv = np.array([[1, 5, 2, 0], [3, 4, 8, 1], [0, 2, 6, 7], [9, 1, 3, 2]], dtype=np.float32)
    x = Tensor(xv.reshape(1, 1, 4, 4), requires_grad=True)
    y = F.max_pool2d(x, 2)
    g = np.array([[[[10, 20], [30, 40]]]], dtype=np.float32)
    y.backward(g)
    arg = list(zip(*np.nonzero(x.grad[0, 0])))
    fig, axes = plt.subplots(1, 4, figsize=(8.5, 2.4), gridspec_kw={"width_ratios": [4, 2, 2, 4]})
    grid(axes[0], xv, "x (4×4), argmax outlined", highlight=arg)
    axes[0].plot([1.5, 1.5], [-0.5, 3.5], color="k", lw=2, zorder=6)    # window borders
    axes[0].plot([-0.5, 3.5], [1.5, 1.5], color="k", lw=2, zorder=6)
    grid(axes[1], y.numpy()[0, 0], "y = max_pool2d(x, 2)", cmap="Purples")
    grid(axes[2], g[0, 0], "upstream g", cmap="Oranges")
    grid(axes[3], x.grad[0, 0], "dL/dx: g routed to the argmax", cmap="Oranges", highlight=arg)
    return fig


# =========================================================================== relu
@figure("relu")
def fig_relu():
    xs = np.linspace(-3, 3, 601)
    x = Tensor(xs, requires_grad=True)
    F.relu(x).backward(np.ones_like(xs))
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.4))
    axes[0].plot(xs, F.relu(Tensor(xs)).numpy(), color="tab:blue")
    axes[0].set_title("relu(x) = max(x, 0)")
    axes[1].plot(xs[xs < 0], x.grad[xs < 0], color="tab:orange")
    axes[1].plot(xs[xs > 0], x.grad[xs > 0], color="tab:orange")
    axes[1].plot([0], [0], "o", color="tab:orange")
    axes[1].plot([0], [1], "o", mfc="white", color="tab:orange")
    axes[1].set_title("d relu / dx (0 at x = 0, as PyTorch)")
    for ax in axes:
        ax.axhline(0, color="0.8", lw=0.8)
        ax.axvline(0, color="0.8", lw=0.8)
        ax.set_xlabel("x")
    return fig


# =========================================================================== group_norm
@figure("group_norm")
def fig_group_norm():
    rng = np.random.default_rng(0)
    scale, shift = np.array([1.0, 3.0, 0.5, 2.0]), np.array([2.0, -1.0, 5.0, 0.0])
    x = rng.standard_normal((2, 4, 16, 16)) * scale[:, None, None] + shift[:, None, None]
    x[1] = 2 * x[1] + 3                       # the second image: brighter, more contrast
    panels = [("input", x),
              ("group_norm(x, 2): 2 groups", F.group_norm(Tensor(x), 2).numpy()),
              ("group_norm(x, 4): instance norm", F.group_norm(Tensor(x), 4).numpy())]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.6), sharey=False)
    colors = ["tab:blue", "tab:blue", "tab:orange", "tab:orange"]
    for ax, (title, v) in zip(axes, panels):
        data = [v[n, c].ravel() for n in range(2) for c in range(4)]
        parts = ax.boxplot(data, widths=0.6, showfliers=False, patch_artist=True)
        for k, box in enumerate(parts["boxes"]):
            box.set_facecolor(colors[k % 4] if k < 4 else "0.85")
            box.set_alpha(0.7)
        ax.set_xticks(range(1, 9), [f"{n}.{c}" for n in range(2) for c in range(4)])
        ax.axhline(0, color="0.8", lw=0.8)
        ax.set_title(title)
    axes[1].set_xlabel("image.channel (blue, orange: the two groups of image 0)")
    return fig


# =========================================================================== cat
@figure("cat")
def fig_cat():
    fig, ax = plt.subplots(figsize=(8, 2.3))
    blocks = [("skip (64 ch)", 0, 2, "#9ecae1"), ("up-conv (64 ch)", 2.3, 2, "#fdae6b")]
    for label, x0, w, c in blocks:
        ax.add_patch(Rectangle((x0, 0), w, 1.5, fc=c, ec="0.3"))
        ax.text(x0 + w / 2, 0.75, label, ha="center", va="center")
    ax.add_patch(Rectangle((5.5, 0), 2, 1.5, fc="#9ecae1", ec="0.3"))
    ax.add_patch(Rectangle((7.5, 0), 2, 1.5, fc="#fdae6b", ec="0.3"))
    ax.text(7.5, 1.75, "cat([skip, up], dim=1): 128 ch", ha="center")
    ax.text(6.5, 0.75, "ch 0..63", ha="center", va="center")
    ax.text(8.5, 0.75, "ch 64..127", ha="center", va="center")
    ax.annotate("", xy=(5.4, 0.75), xytext=(4.4, 0.75),
                arrowprops=dict(arrowstyle="-|>", color="0.3"))
    ax.text(6.5, -0.45, "g[:, :64] → skip", ha="center", color="tab:red")
    ax.text(8.5, -0.45, "g[:, 64:] → up-conv", ha="center", color="tab:red")
    ax.set_xlim(-0.2, 9.8)
    ax.set_ylim(-0.8, 2.1)
    ax.set_axis_off()
    ax.set_title("forward: stack along the channels; backward: slice the gradient", loc="left")
    return fig


# =========================================================================== losses
@figure("cross_entropy")
def fig_cross_entropy():
    # the page's worked example: three classes, logits (2, 1, 0.1), true class 0
    logits = Tensor(np.array([[2.0, 1.0, 0.1]], np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0]))
    loss.backward()
    p = F.softmax(Tensor(logits.numpy()), dim=1).numpy()[0]
    y = np.eye(3)[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.7))
    k = np.arange(3)
    axes[0].bar(k - 0.2, p, 0.4, label="p = softmax(x)")
    axes[0].bar(k + 0.2, y, 0.4, label="y = one-hot(t=0)", color="0.7")
    axes[0].plot(k, logits.grad[0], "o-", color="tab:red", label="dL/dx = p − y")
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[0].set_xticks(k)
    axes[0].set_xlabel("class c")
    axes[0].legend(fontsize=7, loc="upper right")
    shown = ", ".join(f"{v:g}" for v in logits.numpy()[0])
    axes[0].set_title(f"logits x = [{shown}], target 0: L = {loss.item():.3f}")
    margins = np.linspace(0, 200, 401).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        naive = -np.log(np.exp(np.float32(0)) / (np.exp(np.float32(0)) + np.exp(margins)))
    stable = F.cross_entropy(Tensor(np.stack([np.zeros_like(margins), margins], 1)),
                             np.zeros(len(margins), np.int64), reduction="none").numpy()
    axes[1].plot(margins, stable, label="minicnn (log-sum-exp)", lw=3, alpha=0.6)
    axes[1].plot(margins, np.where(np.isfinite(naive), naive, np.nan), "--", color="tab:red",
                 label="naive −log(eˣ⁰/Σeˣ) in float32")
    bad = margins[~np.isfinite(naive)]
    if bad.size:
        axes[1].axvline(bad[0], color="tab:red", lw=0.8, ls=":")
        axes[1].text(bad[0] + 3, 20, f"naive: inf/nan\nfrom {bad[0]:.1f}", color="tab:red",
                     fontsize=8)
    axes[1].set_xlabel("x₁ − x₀ (wrong class ahead by)")
    axes[1].set_ylabel("loss for t = 0")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[1].set_title("the stable form never overflows")
    return fig


@figure("dice_loss")
def fig_dice_loss():
    n = 60
    pos = np.arange(n)
    target = ((pos >= 20) & (pos < 40)).astype(np.int64)
    z = 3.0 * (np.exp(-((pos - 32) / 9.0) ** 2) - 0.5)          # a shifted, soft guess
    logits = Tensor(np.stack([np.zeros(n), z])[None, :, None, :], requires_grad=True)
    t = target[None, None, :]
    F.dice_loss(logits, t, classes=[1]).backward()
    p = F.softmax(Tensor(logits.numpy()), dim=1).numpy()[0, 1, 0]
    # the gradient with respect to the probabilities p_1: -(2 y - dice) / D
    y = target.astype(float)
    D = p.sum() + y.sum() + 1.0
    dice = (2 * (p * y).sum() + 1.0) / D
    gp = -(2 * y - dice) / D
    ce = Tensor(logits.numpy(), requires_grad=True)
    F.cross_entropy(ce, t).backward()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 2.6))
    axes[0].fill_between(pos, 0, y, step="mid", color="0.85", label="target y (class 1)")
    axes[0].plot(pos, p, color="tab:blue", label="p₁ = softmax(x)₁")
    axes[0].set_title(f"prediction vs target: dice = {dice:.3f}")
    axes[0].legend(fontsize=7)
    axes[1].plot(pos, gp, color="tab:purple", label="∂L/∂p₁ (Dice): −(2y − dice)/D")
    axes[1].plot(pos, logits.grad[0, 1, 0], color="tab:red", label="∂L/∂x₁ (Dice, via softmax)")
    axes[1].plot(pos, ce.grad[0, 1, 0], color="tab:green", ls="--",
                 label="∂L/∂x₁ (cross-entropy, mean)")
    axes[1].axhline(0, color="0.6", lw=0.8)
    axes[1].legend(fontsize=7, loc="lower left")
    axes[1].set_xlabel("pixel")
    axes[1].set_title("gradients")
    axes[0].set_xlabel("pixel")
    return fig


@figure("focal_loss")
def fig_focal_loss():
    pt = np.linspace(0.01, 0.999, 300)
    # logits [log pt, log(1 - pt)] give softmax(x)[0] = pt exactly
    logits = Tensor(np.stack([np.log(pt), np.log1p(-pt)], 1))
    t = np.zeros(len(pt), np.int64)
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    for gamma in (0, 0.5, 1, 2, 5):
        loss = F.focal_loss(logits, t, gamma=gamma, reduction="none").numpy()
        axes[0].plot(pt, loss, label=f"γ = {gamma:g}" + (" (cross-entropy)" if gamma == 0 else ""))
        x = Tensor(logits.numpy(), requires_grad=True)
        F.focal_loss(x, t, gamma=gamma, reduction="sum").backward()
        axes[1].plot(pt, -x.grad[:, 0], label=f"γ = {gamma:g}")
    axes[0].set_xlabel("p_t (probability of the true class)")
    axes[0].set_ylabel("loss")
    axes[0].set_ylim(0, 4)
    axes[0].legend(fontsize=7)
    axes[0].set_title("FL = −(1 − p_t)^γ log p_t")
    axes[1].set_xlabel("p_t")
    axes[1].set_ylabel("−∂L/∂x_t")
    axes[1].set_title("gradient on the true logit")
    return fig


# =========================================================================== optimizers
def _trajectory(make, steps=60, start=(-4.0, 2.0)):
    p = Tensor(np.array(start), requires_grad=True)
    opt = make([p])
    scale = Tensor(np.array([0.5, 5.0]))
    path = [p.numpy()]
    for _ in range(steps):
        opt.zero_grad()
        (p * p * scale).sum().backward()
        opt.step()
        path.append(p.numpy())
    return np.array(path)


@figure("optimizers")
def fig_optimizers():
    runs = {
        "SGD lr 0.18": lambda ps: optim.SGD(ps, lr=0.18),
        "SGD + momentum 0.7, lr 0.05": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.7),
        "AdaGrad lr 1.0": lambda ps: optim.Adagrad(ps, lr=1.0),
        "Adam lr 0.2, betas (0.9, 0.99)": lambda ps: optim.Adam(ps, lr=0.2, betas=(0.9, 0.99)),
    }
    gx, gy = np.meshgrid(np.linspace(-4.5, 4.5, 200), np.linspace(-2.5, 2.5, 120))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3), gridspec_kw={"width_ratios": [3, 2]})
    axes[0].contour(gx, gy, 0.5 * gx ** 2 + 5 * gy ** 2, levels=12, colors="0.8", linewidths=0.8)
    for label, make in runs.items():
        path = _trajectory(make)
        axes[0].plot(path[:, 0], path[:, 1], ".-", ms=3, lw=1, label=label)
        f = 0.5 * path[:, 0] ** 2 + 5 * path[:, 1] ** 2
        axes[1].semilogy(np.maximum(f, 1e-12), label=label)
    axes[0].plot([0], [0], "k*")
    axes[0].set_title("60 steps on f = ½x² + 5y² (condition number 10)")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("f")
    axes[1].set_title("loss")
    return fig


# =========================================================================== U-Net
@figure("unet_architecture")
def fig_unet_architecture():
    import unet_table
    from cmr.unet import UNet
    minicnn.manual_seed(0)
    records, _ = unet_table.trace(UNet())
    producer = {}
    fig, ax = plt.subplots(figsize=(11, 4.2))
    x = 0.0
    colours = {"conv": "#6baed6", "transposed": "#74c476", "pool": "#fb6a4a", "cat": "#bdbdbd"}
    for rec in records:
        if rec.kind == "relu":
            producer[rec.out_id] = producer[rec.in_ids[0]]
            continue
        level = int(round(np.log2(96 / rec.output[2])))
        kind = "pool" if rec.op.startswith("MaxPool") else rec.kind
        width = 0.25 + 0.12 * np.log2(rec.output[1])
        y = -level * 1.5
        ax.add_patch(Rectangle((x, y), width, 1.0, fc=colours[kind], ec="0.3", lw=0.6))
        ax.text(x + width / 2, y - 0.08, str(rec.output[1]), ha="center", va="top", fontsize=6.5)
        producer[rec.out_id] = (x, y, width)
        if kind == "cat":                        # the skip: over the top, into the cat
            sx, sy, sw = producer[rec.in_ids[0]]
            ax.plot([sx + sw / 2, sx + sw / 2, x + width / 2], [sy + 1.0, sy + 1.3, sy + 1.3],
                    color="0.45", ls="--", lw=0.8)
            ax.annotate("", xy=(x + width / 2, y + 1.0), xytext=(x + width / 2, sy + 1.3),
                        arrowprops=dict(arrowstyle="-|>", color="0.45", lw=0.8))
        x += width + 0.25
    for lvl in range(5):
        ax.text(-0.4, -lvl * 1.5 + 0.5, f"{96 >> lvl}×{96 >> lvl}", ha="right", va="center",
                fontsize=8)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, ["3×3 conv (+ReLU) / 1×1 head", "2×2 up-conv, stride 2",
                        "2×2 max-pool", "cat (skip, dashed)"], loc="lower right", fontsize=7,
              ncol=2, frameon=False)
    ax.set_xlim(-1.6, x)
    ax.set_ylim(-4 * 1.5 - 0.4, 1.5)
    ax.set_axis_off()
    ax.set_title("cmr.unet.UNet() traced at 96×96 (numbers: output channels; "
                 "box width grows with log₂ channels)")
    return fig


@figure("unet_receptive_field")
def fig_unet_receptive_field():
    import unet_table
    size = 224
    extents, grads = unet_table.measured_receptive_field([2], size=size)
    g = grads[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    with np.errstate(divide="ignore"):
        im = axes[0].imshow(np.log10(np.abs(g)), cmap="magma", vmin=np.log10(np.abs(g).max()) - 12)
    fig.colorbar(im, ax=axes[0], label="log₁₀ |∂y/∂x|", shrink=0.85)
    rows = np.flatnonzero(np.abs(g).sum(1))
    cols = np.flatnonzero(np.abs(g).sum(0))
    axes[0].add_patch(Rectangle((cols[0] - 0.5, rows[0] - 0.5), len(cols), len(rows), fill=False,
                                ec="cyan", lw=1))
    c = size // 2 + 2
    axes[0].add_patch(Rectangle((c - 48, c - 48), 96, 96, fill=False, ec="white", ls="--", lw=1))
    axes[0].plot([c], [c], "c+")
    axes[0].set_title(f"one output pixel: {extents[2][0]}×{extents[2][1]} input pixels\n"
                      "(dashed: a 96×96 image for scale)", fontsize=9)
    axes[0].set_axis_off()
    profile = np.abs(g[c])
    axes[1].semilogy(np.arange(size) - c, np.where(profile > 0, profile, np.nan))
    axes[1].set_xlabel("input column − output column")
    axes[1].set_title("|∂y/∂x| along the pixel's row (weights 1/fan-in):\n"
                      "every pixel of the window counts, the centre most", fontsize=9)
    fig.subplots_adjust(wspace=0.5)
    return fig


# =========================================================================== CUDA
@figure("cuda_tiling")
def fig_cuda_tiling():
    from minicnn.backend.cuda.planner import TILES, tile_threads
    name = "m64n64"
    BM, BN, BK, TM, TN = TILES[name]
    RS, CS = BM // TM, BN // TN
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), gridspec_kw={"width_ratios": [1.35, 1]})
    ax = axes[0]
    # Out = A (M x K) * B (K x Ncols), drawn with M = 4 BM, Ncols = 6 BN, K = 5 BK (schematic)
    M, N, K = 4, 6, 5
    ox, by = K + 1.0, M + 1.0                 # Out starts at x = ox; B starts at y = by
    blk_i, blk_j, step = 1, 2, 2              # the block tile shown, and the current K step
    for i in range(M):
        for j in range(N):
            hit = (i, j) == (blk_i, blk_j)
            ax.add_patch(Rectangle((ox + j, M - 1 - i), 1, 1, fc="#fdae6b" if hit else "white",
                                   ec="0.5", lw=0.6))
    for k in range(K):
        ax.add_patch(Rectangle((k, M - 1 - blk_i), 1, 1, ec="0.5", lw=0.6,
                               fc="#6baed6" if k == step else "#deebf7"))
        ax.add_patch(Rectangle((ox + blk_j, by + K - 1 - k), 1, 1, ec="0.5", lw=0.6,
                               fc="#74c476" if k == step else "#e5f5e0"))
    ax.add_patch(Rectangle((0, 0), K, M, fill=False, ec="0.2", lw=1.2))
    ax.add_patch(Rectangle((ox, 0), N, M, fill=False, ec="0.2", lw=1.2))
    ax.add_patch(Rectangle((ox, by), N, K, fill=False, ec="0.2", lw=1.2))
    ax.text(K / 2, -0.3, "A (M × K)\nweights (forward)", ha="center", va="top", fontsize=8)
    ax.text(ox + N / 2, -0.3, f"Out (M × Ncols): one thread block\nper {BM}×{BN} tile (orange)",
            ha="center", va="top", fontsize=8)
    ax.text(ox + N + 0.2, by + K / 2, "B (K × Ncols)\nim2col of x:\ngathered on the\nfly, "
            "never stored", va="center", fontsize=8)
    ax.text(K / 2, by + K / 2, f"one step of the K loop:\nthe {BM}×{BK} slice of A\n(dark blue) "
            f"and the\n{BK}×{BN} slice of B\n(dark green) go to\nshared memory",
            ha="center", va="center", fontsize=8)
    ax.set_xlim(-0.3, ox + N + 3.2)
    ax.set_ylim(-1.6, by + K + 0.3)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"tile '{name}': BM={BM}, BN={BN}, BK={BK}, TM={TM}, TN={TN}, "
                 f"{tile_threads(name)} threads", fontsize=9)
    # inside one block tile: who computes what
    owner = np.zeros((BM, BN))
    for t in range(32):                      # warp 0
        tx, ty = t % CS, t // CS
        for i in range(TM):
            for j in range(TN):
                owner[ty + i * RS, tx + j * CS] = 1
    for i in range(TM):                      # thread 0
        for j in range(TN):
            owner[i * RS, j * CS] = 2
    t5 = 5
    for i in range(TM):                      # thread 5
        for j in range(TN):
            owner[t5 // CS + i * RS, t5 % CS + j * CS] = 3
    cmap = matplotlib.colors.ListedColormap(["white", "#c6dbef", "#e6550d", "#756bb1"])
    axes[1].imshow(owner, cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
    axes[1].set_xticks(np.arange(0, BN + 1, CS) - 0.5)
    axes[1].set_yticks(np.arange(0, BM + 1, RS) - 0.5)
    axes[1].set_xticklabels(np.arange(0, BN + 1, CS))
    axes[1].set_yticklabels(np.arange(0, BM + 1, RS))
    axes[1].grid(color="0.6", lw=0.5)
    axes[1].set_title(f"one {BM}×{BN} block tile: thread 0 (orange), thread 5 (purple),\n"
                      "warp 0 = threads 0..31 (blue)", fontsize=9)
    axes[1].set_xlabel("column (n, p, q) in the tile")
    axes[1].set_ylabel("row (output channel)")
    return fig


@figure("results_epochs")
def fig_results_epochs():
    """The results page: validation Dice per epoch of two seeds of --preset cpu16-acdc-strong,
    read from their stored logs (benchmarks/results/cpu/cmr_runs/), best epoch marked."""
    import json
    runs = os.path.join(ROOT, "benchmarks", "results", "cpu", "cmr_runs")
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    for folder, label, color in (("v2_inst_acdc_strong_e100", "seed 0", "C0"),
                                 ("v2_s1_inst_acdc_strong_e100", "seed 1", "C1")):
        with open(os.path.join(runs, folder, "log.jsonl"), encoding="utf-8") as f:
            log = [json.loads(line) for line in f]
        epochs = [r["epoch"] for r in log]
        dice = [r["val_dice"]["mean"] for r in log]
        best = int(np.argmax(dice))
        ax.plot(epochs, dice, color=color, lw=1, label=label)
        ax.plot(epochs[best], dice[best], "o", color=color, ms=5)
        ax.annotate(f"best.npz: epoch {epochs[best]}, {dice[best]:.3f}",
                    (epochs[best], dice[best]), textcoords="offset points",
                    xytext=(-20, -30 if color == "C1" else 10), fontsize=8, color=color)
    ax.set_ylim(0.8, 0.93)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cmr/val mean Dice")
    ax.set_title("--preset cpu16-acdc-strong: the best epoch is chosen on 20 cmr/val slices")
    ax.legend(loc="lower right", frameon=False)
    return fig


# =========================================================================== the ladder
def _rung_constants(file):
    """The ``constexpr int`` tiling constants of a rung of dev/cuda/ (its source)."""
    folder = os.path.join(ROOT, "dev", "cuda")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import launch
    return launch.cu_constants(file)


@figure("cuda_ladder_smem")
def fig_cuda_ladder_smem():
    """Global loads of each input pixel, per output channel, for a 40x40 image:
    rung 1 (one per window that covers it) against rung 2 (one per block whose
    tile plus halo covers it), from the kernels' index arithmetic."""
    c = _rung_constants("conv_2_smem.cu")
    TILE, HALO = c["TILE"], c["HALO"]
    H = W = 40
    naive = np.zeros((H, W), int)
    for p in range(H):                    # conv1_forward: output (p, q), taps (i, j)
        for q in range(W):
            for i in range(3):
                for j in range(3):
                    h, v = p + i - 1, q + j - 1
                    if 0 <= h < H and 0 <= v < W:
                        naive[h, v] += 1
    smem = np.zeros((H, W), int)
    tiles_w = -(-W // TILE)
    for block in range(-(-H // TILE) * tiles_w):   # conv2_tiles: its patch copy
        p0, q0 = block // tiles_w * TILE, block % tiles_w * TILE
        for r in range(HALO):
            for s_ in range(HALO):
                h, v = p0 + r - 1, q0 + s_ - 1
                if 0 <= h < H and 0 <= v < W:
                    smem[h, v] += 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, counts, title in (
            (axes[0], naive, "rung 1: one global load\nper window over the pixel"),
            (axes[1], smem, f"rung 2: one per block whose\n{HALO}x{HALO} patch "
                            "holds the pixel")):
        im = ax.imshow(counts, cmap="Oranges", vmin=0, vmax=9)
        ax.set_title(f"{title}\n{counts.sum():,} loads for {H * W:,} pixels "
                     f"({counts.sum() / (H * W):.2f} each)", fontsize=9)
        ax.set_xlabel("input column")
        ax.set_ylabel("input row")
        for k in range(0, W + 1, TILE):
            ax.axvline(k - 0.5, color="tab:blue", lw=0.8)
            ax.axhline(k - 0.5, color="tab:blue", lw=0.8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="global loads per output channel")
    fig.suptitle(f"Reads of a {H}x{W} input channel (blue: the {TILE}x{TILE} output "
                 "tiles of rung 2's blocks)", fontsize=10)
    return fig


@figure("cuda_ladder_loads")
def fig_cuda_ladder_loads():
    """Loads per multiply-add in the forward pass's inner loop, rungs 1-3, from
    the tiling constants of the sources."""
    c2, c3 = _rung_constants("conv_2_smem.cu"), _rung_constants("conv_3_regblock.cu")
    TILE, HALO, CB = c2["TILE"], c2["HALO"], c2["CB"]
    BM, BN, BK, TM, TN = (c3[k] for k in ("BM", "BN", "BK", "TM", "TN"))
    fmas2 = TILE * TILE * CB * 9          # per staged chunk of rung 2
    rows = [("rung 1\nnaive", 2.0, 0.0),
            ("rung 2\nshared tiles", (CB * HALO * HALO + CB * 9) / fmas2, 2.0),
            ("rung 3\nregister blocks", (BM + BN) * BK / (BM * BN * BK),
             (TM + TN) / (TM * TN))]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(rows))
    for dx, k, label, color in ((-0.2, 1, "from global memory", "tab:red"),
                                (0.2, 2, "from shared memory", "tab:blue")):
        vals = [r[k] for r in rows]
        ax.bar(x + dx, vals, 0.4, label=label, color=color)
        for xi, v in zip(x, vals):
            ax.text(xi + dx, v * 1.05 + 0.01, f"{v:.3g}", ha="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([r[0] for r in rows])
    ax.set_ylabel("loads per multiply-add")
    ax.set_title(f"Forward pass, inner loop (rung 2: {TILE}x{TILE} pixels, {CB} channels "
                 f"a step;\nrung 3: {BM}x{BN} tile, {TM}x{TN} outputs per thread)",
                 fontsize=9)
    ax.set_ylim(0, 2.6)
    ax.legend(frameon=False, loc="upper center")
    return fig



def _tf32(value):
    """float32 ``value`` rounded to TF32 as cvt.rna.tf32.f32 does (rung 6): 10
    mantissa bits, to nearest, ties away from zero."""
    from minicnn.backend import numpy_backend
    return numpy_backend.to_tf32(np.array([value], np.float32))[0]


@figure("cuda_tf32_bits")
def fig_cuda_tf32_bits():
    """The 32 bits of pi in fp32 and rounded to TF32: the same sign and exponent,
    10 of the 23 mantissa bits kept, the 13 others zero."""
    fig, ax = plt.subplots(figsize=(10, 2.4))
    colors = {"sign": "tab:red", "exponent": "tab:blue", "mantissa": "tab:green",
              "dropped": "0.85"}
    for row, (name, value) in enumerate((("fp32", np.float32(np.pi)),
                                         ("TF32", _tf32(np.float32(np.pi))))):
        word = int(np.array([value], np.float32).view(np.uint32)[0])
        y = 1 - row
        for i in range(32):                       # bit 31 (sign) on the left
            bit = (word >> (31 - i)) & 1
            part = "sign" if i == 0 else "exponent" if i < 9 else "mantissa"
            if name == "TF32" and i >= 19:
                part = "dropped"
            ax.add_patch(Rectangle((i, y), 0.95, 0.8, color=colors[part]))
            ax.text(i + 0.47, y + 0.4, str(bit), ha="center", va="center", fontsize=8,
                    color="black" if part == "dropped" else "white")
        ax.text(-0.5, y + 0.4, f"{name}\n{value:.9g}", ha="right", va="center", fontsize=9)
    for part, (x0, x1) in (("sign", (0, 1)), ("exponent: 8 bits", (1, 9)),
                           ("mantissa: 10 bits (TF32)", (9, 19)),
                           ("13 more mantissa bits (fp32 only)", (19, 32))):
        ax.text((x0 + x1) / 2, 2.0, part, ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-5, 32)
    ax.set_ylim(-0.1, 2.4)
    ax.axis("off")
    ax.set_title("pi in fp32 and in TF32 (cvt.rna: rounded to nearest, ties away from "
                 "zero): fp32's range, fp16's precision", fontsize=9)
    return fig


def mma_fragments():
    """``{"A": (lane, register) arrays 16x8, "B": 8x8, "C": 16x8}`` of
    mma.m16n8k8 with .tf32 operands, from the PTX ISA's table (the layout table
    of kernels/conv_tf32.cu): g = lane / 4, t = lane % 4."""
    out = {"A": np.zeros((2, 16, 8), int), "B": np.zeros((2, 8, 8), int),
           "C": np.zeros((2, 16, 8), int)}
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for reg, (r, c) in enumerate(((g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4))):
            out["A"][:, r, c] = lane, reg
        for reg, (r, c) in enumerate(((t, g), (t + 4, g))):
            out["B"][:, r, c] = lane, reg
        for reg, (r, c) in enumerate(((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t),
                                      (g + 8, 2 * t + 1))):
            out["C"][:, r, c] = lane, reg
    return out


@figure("cuda_mma_fragments")
def fig_cuda_mma_fragments():
    """Which lane holds which element of A (16x8), B (8x8) and C/D (16x8) in
    mma.m16n8k8 with TF32 operands; the colour is the register (a0..a3, ...)."""
    frags = mma_fragments()
    cmap = matplotlib.colors.ListedColormap(["#9ecae1", "#fdae6b", "#a1d99b", "#d4b9da"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.6),
                             gridspec_kw={"width_ratios": [8, 8, 8]})
    titles = {"A": "A: 16 x 8 (row), a0..a3", "B": "B: 8 x 8 (col), b0, b1",
              "C": "C and D: 16 x 8, c0..c3"}
    for ax, key in zip(axes, ("A", "B", "C")):
        lanes, regs = frags[key]
        ax.imshow(regs, cmap=cmap, vmin=0, vmax=3)
        for (r, c), lane in np.ndenumerate(lanes):
            ax.text(c, r, str(lane), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(lanes.shape[1]))
        ax.set_yticks(range(lanes.shape[0]))
        ax.tick_params(labelsize=7, length=0)
        ax.set_xlabel({"A": "k", "B": "n", "C": "n"}[key])
        ax.set_ylabel({"A": "m", "B": "k", "C": "m"}[key])
        ax.set_title(titles[key], fontsize=9)
    handles = [Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(4)]
    fig.legend(handles, [f"register {i}" for i in range(4)], loc="lower center", ncol=4,
               frameon=False, fontsize=8)
    fig.suptitle("mma.sync.aligned.m16n8k8 with .tf32 operands: the lane (number) and "
                 "register (colour) of each element; g = lane / 4, t = lane % 4",
                 fontsize=10)
    return fig



# =========================================================================== data parallel
def ring_allreduce_steps(n):
    """Simulate the ring all-reduce of ``n`` ranks, each holding a vector cut into ``n``
    chunks: ``[(title, counts, received)]`` after each step, where ``counts[r, c]`` is how
    many ranks' chunk ``c`` rank ``r`` has summed, and ``received`` the cells that changed."""
    parts = [[{r} for _ in range(n)] for r in range(n)]     # whose data each chunk holds
    steps = [("start: each rank its own gradient", [[len(x) for x in row] for row in parts], [])]
    for phase, rounds in (("reduce-scatter", n - 1), ("all-gather", n - 1)):
        for s in range(rounds):
            # rank r sends one chunk to rank r + 1: in the reduce-scatter it adds it to its
            # own, in the all-gather (chunks already complete) it replaces its own
            shift = s if phase == "reduce-scatter" else s - 1
            sent = [(r, (r - shift) % n) for r in range(n)]
            payload = {(r + 1) % n: (c, set(parts[r][c])) for r, c in sent}
            for dst, (c, data) in payload.items():
                parts[dst][c] = parts[dst][c] | data if phase == "reduce-scatter" else data
            steps.append((f"{phase} {s + 1}", [[len(x) for x in row] for row in parts],
                          [(dst, c) for dst, (c, _) in payload.items()]))
    assert all(len(x) == n for row in parts for x in row)     # every rank holds the full sum
    return steps


@figure("ring_allreduce")
def fig_ring_allreduce():
    """The ring all-reduce of 4 ranks (rows) on a gradient cut into 4 chunks (columns): the
    number in a cell is how many ranks' gradients that chunk sums; outlined: received."""
    steps = ring_allreduce_steps(4)
    fig, axes = plt.subplots(1, len(steps), figsize=(12, 2.4))
    for ax, (title, counts, received) in zip(axes, steps):
        grid(ax, counts, title.replace(" ", "\n", 1), highlight=received, vmin=0, vmax=6,
             fontsize=8)
    axes[0].set_ylabel("rank 0-3")
    axes[0].set_xlabel("chunk 0-3")
    fig.suptitle("Ring all-reduce, 4 ranks: each step every rank sends 1/4 of the gradient to "
                 "the next; 2 x 3 steps", y=1.04)
    return fig


def main(argv):
    names = argv or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; known: {sorted(FIGURES)}")
    np.random.seed(0)
    minicnn.manual_seed(0)
    for name in names:
        path = save(FIGURES[name](), name)
        print(f"{os.path.relpath(path, ROOT)}  {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
