"""``Tensor`` and reverse-mode automatic differentiation.

A Tensor wraps an array (NumPy on the CPU, CuPy on the GPU). Every operation that produces a
Tensor from Tensors that need gradients records, on its output, the parents and a function that
turns the output's gradient into the parents' gradients (the chain rule for that one op).

``loss.backward()`` walks this graph once in reverse topological order::

    grad[loss] = 1
    for node in reversed(topological_order(loss)):       # every consumer before its inputs
        for parent, g in zip(node.parents, node.backward_fn(grad[node])):
            grad[parent] += g                              # a tensor used twice gets the sum

Leaves (tensors made by the user, e.g. parameters) keep their gradient in ``.grad``, which
accumulates across calls until it is reset (``optimizer.zero_grad()``). The graph and the arrays
its backward functions saved are released as the walk passes them.
"""
import contextlib

import numpy as np

from . import backend

_grad_enabled = True


def is_grad_enabled():
    """Whether operations record a graph right now (False inside ``no_grad()``)."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Context in which no operation records a graph (inference, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def _as_array(data):
    """The array a new Tensor holds, with minicnn's dtype rules.

    float32/float64 arrays keep their dtype, other float arrays become float32, integer and bool
    arrays stay as they are, and Python numbers and (nested) lists become float32.
    """
    if isinstance(data, Tensor):
        return data.data
    if isinstance(data, np.generic):
        data = np.asarray(data)
    if isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__"):
        kind = data.dtype.kind
        if kind == "f" and data.dtype not in (np.float32, np.float64):
            return data.astype(np.float32)
        if kind not in "fiub":
            raise TypeError(f"unsupported dtype {data.dtype} for a Tensor")
        return data
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot make a Tensor from {type(data).__name__}: {err}") from None
    return array


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    ``Tensor(data, requires_grad=False)``: ``data`` is an array (NumPy or CuPy), a Python number
    or a list. Only floating tensors can require gradients.
    """

    def __init__(self, data, requires_grad=False):
        self.data = _as_array(data)
        self.grad = None
        self._parents = ()
        self._backward = None      # grad_out -> one gradient (or None) per parent
        self._is_leaf = True
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind != "f":
            raise ValueError(f"only floating tensors can require gradients, not {self.data.dtype}")

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def device(self):
        """``"cpu"`` or ``"cuda"``."""
        return backend.of(self.data).device

    @property
    def backend(self):
        """The backend module whose primitives compute on this tensor's array."""
        return backend.of(self.data)

    @property
    def is_leaf(self):
        return self._is_leaf

    def numpy(self):
        """A NumPy copy of the values (from the GPU too)."""
        return np.array(self.backend.to_host(self.data), copy=True)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a one-element tensor, not shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self):
        """A new leaf sharing this tensor's values, outside any graph."""
        return Tensor(self.data)

    def to(self, device):
        """This tensor on ``device`` (``"cpu"`` or ``"cuda"``); itself if already there."""
        if device == self.device:
            return self
        target = backend.get(device)
        moved = Tensor(target.asarray(self.backend.to_host(self.data)), self.requires_grad)
        return moved

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        return f"Tensor({self.numpy()!r}{dev}{grad})"

    def __len__(self):
        return self.shape[0]

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into ``.grad`` of every leaf that requires it.

        ``grad`` is the gradient of some final scalar with respect to this tensor; it defaults
        to 1 for a one-element tensor and is required (same shape) otherwise.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input of the computation had requires_grad=True)")
        xp = self.backend.xp
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() needs `grad` for a tensor of shape {self.shape}; "
                                 "it defaults to 1 only for one-element tensors")
            grad = xp.ones_like(self.data)
        else:
            grad = _as_array(grad)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, "
                                 f"tensor has shape {self.shape}")
            grad = xp.asarray(grad, dtype=self.dtype)

        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._is_leaf:
                g = g.astype(node.dtype, copy=False)
                node.grad = g if node.grad is None else node.grad + g
                continue
            if node._backward is None:
                raise RuntimeError("backward() through a graph that was already freed by an "
                                   "earlier backward(); run the forward pass again")
            parent_grads = node._backward(g)
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg
            node._backward, node._parents = None, ()    # free the saved arrays

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __neg__(self):
        return F.neg(self)

    def __pow__(self, exponent):
        return F.pow(self, exponent)

    def __getitem__(self, index):
        return F.getitem(self, index)

    def sum(self, dim=None, keepdim=False):
        return F.sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        return F.mean(self, dim, keepdim)

    def reshape(self, *shape):
        return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
                         else shape)

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def relu(self):
        return F.relu(self)


def _topological_order(root):
    """Nodes that need a gradient, each after all of its parents (iterative DFS)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
    return order


def make_result(data, parents, backward_fn):
    """The output Tensor of an op; records the graph edge if any parent needs a gradient.

    ``backward_fn(grad_out)`` returns one gradient array (or None) per parent.
    """
    out = Tensor(data)
    if _grad_enabled and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._is_leaf = False
        out._parents = tuple(parents)
        out._backward = backward_fn
    return out


from . import functional as F  # noqa: E402  (the ops need Tensor defined first)
