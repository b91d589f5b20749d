"""Data-parallel training for ``cmr.train``: one process (a *rank*) per device, on MPI.

``mpiexec -n N python -m cmr.train ...`` trains one model with N ranks; the same command
without ``mpiexec`` trains as one process, and this module then imports neither mpi4py nor
CuPy (``launched_size`` reads the launcher's environment variables once, at start-up).

Each rank holds the whole model. Every rank draws the same global batch (same seed, same
random generator, the same augmentation of the whole batch: the batches are a one-process
run's), takes its contiguous share of it (``share``), and computes its *term* of the batch's
loss (``World.loss``): a term whose value and gradient, summed over the ranks, are the
one-process loss and gradient. Summing the gradients is one all-reduce over one flat buffer
per step (``sum_gradients``, the loss value rides in its last element), then every rank takes
the same optimizer step. Rank 0 broadcasts the initial parameters, writes every file and
prints; validation is split across the ranks and gathered on rank 0, which scores it.

Why terms and not "average the ranks' losses": the weighted cross-entropy (and focal loss) of
a batch is ``sum_pixels w[t] l / sum_pixels w[t]``, so a rank's term is its weighted sum over
the whole batch's ``sum w[t]``; the shares' weights differ, so the plain average of the
ranks' own means is not the batch's loss. The soft Dice loss sums intersections and areas
over the whole batch before dividing, which no per-rank term reproduces without exchanging
those sums: each rank uses the Dice loss of its share, weighted by its number of images (an
approximation, measured in docs/data_parallel.md). Every normalisation of the U-Net (none,
instance, group) is per image, so nothing else is computed over the batch.

Engines: MPI (mpi4py) moves host buffers (the NumPy backend); with ``--backend cuda`` the
gradients stay on the GPU and NCCL (CuPy's ``cupy.cuda.nccl``, its id sent over MPI) sums
them. Every collective waits at most ``timeout`` seconds: a rank that died or hangs makes the
others print one line and abort the job instead of waiting forever.
"""
import json
import sys
import time

import numpy as np

# The environment variables by which MPI launchers give the number of ranks: Open MPI's
# mpirun, and the PMI of MPICH's hydra (also Intel MPI and Slurm's srun --mpi=pmi2).
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_size(environ):
    """The number of ranks the MPI launcher started (1 without a launcher)."""
    for var in LAUNCHER_SIZE_VARS:
        if environ.get(var):
            return int(environ[var])
    return 1


def shares(n, size):
    """The contiguous slices of ``range(n)`` that ranks ``0 .. size - 1`` take (sizes differ by
    at most one; a rank gets none when ``n < size``)."""
    bounds = [n * r // size for r in range(size + 1)]
    return [slice(bounds[r], bounds[r + 1]) for r in range(size)]


def term_factors(name, class_weights, masks, batch_masks):
    """The factor of each term of loss ``name`` ("ce", "dice", "ce+dice", "focal") for a share
    ``masks`` of the global batch ``batch_masks``: the share's term is that factor times the
    loss of the share alone. Exact for ce and focal, weighted means over the pixels (the
    share's ``sum w[t]`` over the batch's); the share of the images for dice (approximate)."""
    w = np.asarray(class_weights, dtype=np.float64)
    pixels = float(w[masks].sum() / w[batch_masks].sum())
    images = len(masks) / len(batch_masks)
    return {term: pixels if term in ("ce", "focal") else images for term in name.split("+")}


def share_loss(name, make_term, class_weights):
    """``loss(logits, masks, batch_masks)``: the term of loss ``name`` of a share (``logits``
    and ``masks``) of the global batch (``batch_masks``); ``make_term(term)`` builds each
    term's loss function (``cmr.train.make_loss``). Summed over the shares, the values and
    the gradients are those of the whole batch's loss (exactly for ce and focal)."""
    terms = {term: make_term(term) for term in name.split("+")}

    def loss(logits, masks, batch_masks):
        if len(masks) == 0:                    # no image for this rank in this (last) batch
            return (logits * 0.0).sum()
        factors = term_factors(name, class_weights, masks, batch_masks)
        total = None
        for term, fn in terms.items():
            part = fn(logits, masks) * factors[term]
            total = part if total is None else total + part
        return total
    return loss


class LaunchError(RuntimeError):
    """Launched as several ranks, but the MPI engine is missing (a one-line message)."""


class OneProcess:
    """The world of a run without a launcher: every hook leaves the one-process path as it
    was (the whole batch, the plain loss, no communication)."""
    rank, size, is_root = 0, 1, True

    def share(self, n):
        return slice(0, n)

    def loss(self, name, make_term, class_weights):
        fn = make_term(name)
        return lambda logits, masks, batch_masks: fn(logits, masks)

    def sum_gradients(self, params, value):
        return value

    def broadcast_parameters(self, params):
        pass

    def evaluate(self, model, split, device, flip_tta):
        from .evaluate import evaluate
        return evaluate(model, split, device, flip_tta=flip_tta)

    def check_launch(self, cfg):
        pass

    def from_root(self, obj, what):
        """Rank 0's ``obj`` (JSON data) on every rank."""
        return obj


class MPIWorld(OneProcess):
    """``size`` ranks on an MPI communicator (mpi4py); gradients summed over host buffers."""

    POLL_S = 0.001       # how often a waiting rank asks MPI whether the collective is done
    # MPICH's launcher forwards a rank's stderr asynchronously and tears the job down at
    # ``Abort``: without a pause the error line was lost in 6 runs of 30 (2026-12-03).
    ABORT_PAUSE_S = 0.5

    def __init__(self, comm, timeout):
        self.comm, self.timeout = comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0

    # ------------------------------------------------------------ waiting with a deadline
    def _wait(self, request, what, done=None, cancel=None):
        """Wait for a non-blocking collective (``request``, or the test ``done()``); past
        ``timeout`` seconds say so on one line, ``cancel()``, and abort every rank (the
        others may be waiting on a rank that died)."""
        deadline = time.monotonic() + self.timeout
        while not (request.Test() if done is None else done()):
            if time.monotonic() > deadline:
                if cancel is not None:
                    cancel()
                sys.stderr.write(f"error: rank {self.rank} of {self.size}: no answer from the "
                                 f"other ranks for {self.timeout:g} s in the {what} (a rank "
                                 "died or hangs); stopping every rank\n")
                sys.stderr.flush()
                time.sleep(self.ABORT_PAUSE_S)      # let the launcher forward the line
                self.comm.Abort(3)
            time.sleep(self.POLL_S)

    def _sum(self, buf, what):
        from mpi4py import MPI
        self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)

    def _bcast(self, buf, what):
        self._wait(self.comm.Ibcast(buf, root=0), what)

    def _bcast_json(self, obj, what):
        """Rank 0's ``obj`` (JSON data) on every rank."""
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.is_root else None
        length = np.array([0 if data is None else data.size], np.int64)
        self._bcast(length, what)
        buf = data.copy() if self.is_root else np.empty(int(length[0]), np.uint8)
        self._bcast(buf, what)
        return json.loads(buf.tobytes().decode())

    # ------------------------------------------------------------ the hooks of cmr.train
    def from_root(self, obj, what):
        return self._bcast_json(obj, what)

    def share(self, n):
        return shares(n, self.size)[self.rank]

    def loss(self, name, make_term, class_weights):
        return share_loss(name, make_term, class_weights)

    def sum_gradients(self, params, value):
        """Sum every parameter's gradient and ``value`` (this rank's loss term) over the ranks,
        as one flat buffer; the gradients become views of it. Returns the summed value."""
        xp = params[0].backend.xp
        sizes = [p.size for p in params]
        flat = xp.zeros(sum(sizes) + 1, dtype=np.float32)
        offsets = np.cumsum([0] + sizes)
        for p, o, n in zip(params, offsets, sizes):
            if p.grad is not None:             # None: this rank had no image in the batch
                flat[o:o + n] = p.grad.reshape(-1)
        flat[-1] = value
        self._reduce(flat)
        for p, o, n in zip(params, offsets, sizes):
            p.grad = flat[o:o + n].reshape(p.shape)
        return float(flat[-1])

    def _reduce(self, flat):
        self._sum(flat, "gradient all-reduce")

    def broadcast_parameters(self, params):
        """Every rank starts from rank 0's parameters (through the host)."""
        flat = np.concatenate([p.numpy().reshape(-1) for p in params]).astype(np.float32)
        self._bcast(flat, "broadcast of the initial parameters")
        offset = 0
        for p in params:
            p.data = p.backend.asarray(flat[offset:offset + p.size].reshape(p.shape).copy())
            offset += p.size

    def evaluate(self, model, split, device, flip_tta):
        """Each rank predicts its share of ``split``; rank 0 gathers the label maps, scores
        them as ``cmr.evaluate.evaluate`` does and sends the result to every rank."""
        from . import metrics
        from .predict import predict_masks
        parts = shares(len(split), self.size)
        mine = split.images[parts[self.rank]]
        preds = (predict_masks(model, mine, device=device, flip_tta=flip_tta) if len(mine)
                 else np.empty((0,) + split.masks.shape[1:], np.uint8))
        counts = [(s.stop - s.start) * int(np.prod(split.masks.shape[1:])) for s in parts]
        every = np.empty(split.masks.shape, np.uint8) if self.is_root else None
        from mpi4py import MPI
        self._wait(self.comm.Igatherv(np.ascontiguousarray(preds, np.uint8),
                                      [every, counts, MPI.UNSIGNED_CHAR] if self.is_root
                                      else None, root=0), "gather of the validation")
        result = None
        if self.is_root:
            result = metrics.evaluate_masks(every, split.masks, split.names)
            volumes = metrics.volume_metrics(every, split.masks, split.names, None)
            if volumes is not None:
                result["volumes"] = volumes
        return self._bcast_json(result, "broadcast of the validation scores")

    def check_launch(self, cfg):
        """One clear line (from one rank) and every rank exits, for a launch that cannot train:
        ranks started with different configurations, or more ranks than images in a batch."""
        what = "comparison of the ranks' configurations"
        root = self._bcast_json(cfg, what)
        cfg = json.loads(json.dumps(cfg))                  # tuples as lists, as rank 0's
        differ = sorted(k for k in set(root) | set(cfg) if root.get(k) != cfg.get(k))
        first = np.array([self.rank if differ else self.size], np.int32)   # the first that differs
        from mpi4py import MPI
        self._wait(self.comm.Iallreduce(MPI.IN_PLACE, first, op=MPI.MIN), what)
        if first[0] < self.size:
            self._exit(self.rank == first[0], f"rank {self.rank} was started with another "
                       "configuration than rank 0: " + ", ".join(
                           f"{k} {cfg.get(k)!r} (rank 0: {root.get(k)!r})" for k in differ))
        if cfg["members"] > 1:
            self._exit(self.is_root, "--members trains independent models (side by side with "
                       "--jobs); under mpiexec one model trains on several ranks: not both")
        if self.size > cfg["batch_size"]:
            self._exit(self.is_root, f"{self.size} ranks but a batch of {cfg['batch_size']} "
                       f"images: launch at most {cfg['batch_size']} ranks or raise --batch-size")

    def _exit(self, speaks, message):
        if speaks:
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
        raise SystemExit(2)


class NCCLWorld(MPIWorld):
    """MPI for the small messages, NCCL (CuPy) for the gradients, which stay on the GPU.

    NOT RUN YET: written against CuPy's documented ``cupy.cuda.nccl`` API; no GPU was
    available when it was written (2026-12-02). Each rank uses the GPU of its local rank."""

    def __init__(self, comm, timeout):
        super().__init__(comm, timeout)
        import cupy
        from cupy.cuda import nccl
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
        uid = comm.bcast(nccl.get_unique_id() if self.is_root else None, root=0)
        self.cupy, self.nccl = cupy, nccl
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _reduce(self, flat):
        """In-place NCCL all-reduce of a CuPy buffer on the current stream, waited for with
        the same deadline as the MPI collectives (then the communicator is aborted)."""
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size,
                                 self.nccl.NCCL_FLOAT32, self.nccl.NCCL_SUM, stream.ptr)
        finished = stream.record()
        self._wait(None, "NCCL gradient all-reduce", done=lambda: finished.done,
                   cancel=self.nccl_comm.abort)


def world(size, backend, timeout):
    """The world of this process: ``OneProcess`` for one rank (nothing imported), else
    MPI's (``backend`` "cuda": NCCL for the gradients). A clear error without mpi4py."""
    if size <= 1:
        return OneProcess()
    try:
        from mpi4py import MPI
    except ImportError:
        raise LaunchError(f"launched as {size} MPI ranks but mpi4py is not installed: "
                          'pip install ".[mpi]"') from None
    cls = NCCLWorld if backend == "cuda" else MPIWorld
    return cls(MPI.COMM_WORLD, timeout)
