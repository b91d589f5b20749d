"""``Module``: a container of parameters and sub-modules, in PyTorch's shape."""
from collections import OrderedDict

import numpy as np

from .. import backend
from ..tensor import Tensor


def _as_input(value):
    """A module's argument: an array becomes a Tensor (no gradient); anything else as is."""
    if isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__"):
        return Tensor(value)
    return value


def _listed(items, shown=3, sep=", "):
    """The first ``shown`` of ``items`` and how many more, for a one-line message."""
    head = sep.join(map(str, items[:shown]))
    return head if len(items) <= shown else f"{head} and {len(items) - shown} more"


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (``requires_grad=True``)."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad)


class Module:
    """Base class of layers and models.

    Assigning a Parameter or a Module to an attribute registers it, so ``parameters()``,
    ``state_dict()`` and ``to()`` find it. Subclasses define ``forward``; calling the module
    calls ``forward``, with every array argument (NumPy, or CuPy) made a Tensor without
    gradient first, so that ``model(np_array)`` works as ``model(Tensor(np_array))``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*map(_as_input, args),
                            **{k: _as_input(v) for k, v in kwargs.items()})

    # ---------------------------------------------------------------- traversal
    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ---------------------------------------------------------------- modes
    def train(self, mode=True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter (in place) to ``device``; returns the module."""
        target = backend.get(device)
        for p in self.parameters():
            if p.device != device:
                p.data = target.asarray(p.backend.to_host(p.data))
                p.grad = None
        return self

    # ---------------------------------------------------------------- state
    def state_dict(self):
        """Parameter name -> NumPy array (a copy, on the host)."""
        return OrderedDict((name, p.numpy()) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters, keeping each parameter's dtype and device.

        Missing or unexpected keys (with ``strict``) and shape mismatches raise ValueError
        naming the first few and the count.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: {len(missing)} missing keys "
                             f"[{_listed([repr(k) for k in missing])}], {len(unexpected)} "
                             f"unexpected keys [{_listed([repr(k) for k in unexpected])}]")
        wrong = [f"{k}: checkpoint {tuple(np.shape(state[k]))} vs model {own[k].shape}"
                 for k in own if k in state and tuple(np.shape(state[k])) != own[k].shape]
        if wrong:
            raise ValueError(f"load_state_dict: {len(wrong)} of {len(own)} shapes differ: "
                             + _listed(wrong, 2, "; "))
        for k, p in own.items():
            if k in state:
                value = np.asarray(state[k], dtype=p.dtype)
                p.data = p.backend.asarray(value.copy())
        return self

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append("  (" + name + "): " + repr(child).replace("\n", "\n  "))
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")

    def extra_repr(self):
        return ""


class Sequential(Module):
    """Apply modules one after the other."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]
