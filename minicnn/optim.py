"""Optimizers with PyTorch's exact update rules.

Each ``step()`` hands every parameter that has a gradient, with its state, to the backend's
fused update primitive (one pass over memory on the GPU). State lives on the parameters'
device. ``state_dict()`` is plain data (numbers and NumPy arrays) for checkpoints.
"""
import numpy as np

from .tensor import no_grad


class Optimizer:
    """Holds the parameters, their per-parameter state and the hyper-parameters."""

    hyper = ()            # names of the hyper-parameters saved in state_dict

    def __init__(self, params, **hyper):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        for p in self.params:
            if not p.requires_grad:
                raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} "
                                 "does not require grad")
        if hyper.get("lr", 0) < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {hyper['lr']}")
        self.__dict__.update(hyper)
        self.steps = [0] * len(self.params)
        self.state = [{} for _ in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        with no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                if tuple(p.grad.shape) != p.shape:
                    raise ValueError(f"gradient of shape {tuple(p.grad.shape)} for a parameter "
                                     f"of shape {p.shape}")
                self.steps[i] += 1
                self._update(p, p.grad, self.state[i], self.steps[i])

    def _update(self, p, g, state, step):
        raise NotImplementedError

    def _buffer(self, state, name, p):
        if name not in state:
            state[name] = p.backend.xp.zeros_like(p.data)
        return state[name]

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self):
        """``{"hyper": {...}, "steps": [...], "state": [{name: ndarray}, ...]}``."""
        return {"hyper": {k: getattr(self, k) for k in self.hyper},
                "steps": list(self.steps),
                "state": [{k: p_state[k].get() if hasattr(p_state[k], "get") else
                           np.array(p_state[k]) for k in p_state} for p_state in self.state]}

    def load_state_dict(self, state):
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['state'])} parameters, "
                             f"this optimizer {len(self.params)}")
        for p, saved in zip(self.params, state["state"]):
            for k, v in saved.items():
                if tuple(np.shape(v)) != p.shape:
                    raise ValueError(f"optimizer state {k!r} of shape {np.shape(v)} does not "
                                     f"match its parameter {p.shape}")
        self.__dict__.update(state["hyper"])
        self.steps = [int(s) for s in state["steps"]]
        self.state = [{k: p.backend.asarray(np.asarray(v, dtype=p.dtype).copy())
                       for k, v in saved.items()} for p, saved in zip(self.params,
                                                                       state["state"])]


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam``::

        g <- g + wd p;   m <- b1 m + (1-b1) g;   v <- b2 v + (1-b2) g^2
        p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    """
    hyper = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _update(self, p, g, state, step):
        p.backend.adam_update(p.data, g, self._buffer(state, "exp_avg", p),
                              self._buffer(state, "exp_avg_sq", p), lr=self.lr,
                              beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                              weight_decay=self.weight_decay, step=step)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``::

        g <- g + wd p;   b <- mu b + (1 - dampening) g   (b <- g at the first step)
        p <- p - lr (g + mu b)  if nesterov  else  p - lr b      (p - lr g without momentum)
    """
    hyper = ("lr", "momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, params, lr=1e-2, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, weight_decay=weight_decay)

    def _update(self, p, g, state, step):
        first = "momentum_buffer" not in state
        buf = self._buffer(state, "momentum_buffer", p) if self.momentum else None
        p.backend.sgd_update(p.data, g, buf, lr=self.lr, momentum=self.momentum,
                             dampening=self.dampening, nesterov=self.nesterov,
                             weight_decay=self.weight_decay, first=first)


class Adagrad(Optimizer):
    """AdaGrad (Duchi et al. 2011), as ``torch.optim.Adagrad``::

        g <- g + wd p;   s <- s + g^2;   p <- p - lr/(1 + (t-1) lr_decay) * g / (sqrt(s) + eps)
    """
    hyper = ("lr", "lr_decay", "eps", "weight_decay")

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
        super().__init__(params, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)

    def _update(self, p, g, state, step):
        p.backend.adagrad_update(p.data, g, self._buffer(state, "sum", p),
                                 clr=self.lr / (1 + (step - 1) * self.lr_decay), eps=self.eps,
                                 weight_decay=self.weight_decay)
