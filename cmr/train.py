"""Train the padded U-Net on cardiac MR slices: ``python -m cmr.train [--data DIR] ...``.

Defaults are the original work's recipe: Adam (lr 2e-4, betas 0.9/0.99), batch 25, 50 epochs,
cross-entropy with class weights [0.1, 0.3, 0.3, 0.3], U-Net width 64, augmentation on.
Without ``--data`` it trains on synthetic phantom slices (``cmr.phantom``), so that a newcomer
sees the whole job run; real results need real data.

Output folder (``--out``): ``last.npz`` (after every epoch) and ``best.npz`` (best mean
validation Dice) checkpoints, ``log.jsonl`` (one line per epoch, strict JSON: an undefined HD95
is ``null``), ``curves.png`` and ``config.json``. A folder that already holds a run is refused
unless ``--resume`` (continue it) or ``--force`` (delete it first). ``--resume`` continues from
``last.npz`` to the same result as an uninterrupted run, with the run's own settings (only
``--epochs`` may change; a contradicting flag is refused), even after a kill in the middle of
a checkpoint write; Ctrl-C writes ``interrupted.npz`` (the weights at that moment, for a
look; the next resume past it removes it) and keeps ``last.npz`` for an exact resume.

``--members N`` trains an ensemble: N runs with seeds ``seed``, ``seed + 1``, ... on the same
split (``--split-seed``, default ``--seed``), into ``OUT/member0`` ... (each a full run folder
as above; ``--jobs 2`` trains two at a time), then writes ``OUT/ensemble.json`` (the members'
``best.npz``) and the ensemble's validation scores, ``OUT/ensemble_val.json``.
``cmr.evaluate``/``cmr.predict --checkpoint OUT`` load every member and average their class
probabilities.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn import functional as F, optim
from minicnn.backend import numpy_backend

from . import checkpoint, data, distributed, phantom, runfolder
from .augment import AugmentConfig, augment_batch
from .cli import one_line_errors, output_folder
from .evaluate import evaluate, format_table
from .metrics import jsonable
from .presets import DEFAULTS, PRESETS, presets_help
from .unet import ADDED_SETTINGS, NORMS, UNet

CLASSES = ("RV", "Myo", "LV")
def make_loss(name, class_weights):
    """``loss(logits, masks)`` for ``--loss``: ce, dice, ce+dice or focal."""
    w = np.asarray(class_weights, dtype=np.float32)

    def ce(x, t):
        return F.cross_entropy(x, t, w)

    def dice(x, t):
        return F.dice_loss(x, t, smooth=1.0, classes=(1, 2, 3))
    return {"ce": ce, "dice": dice, "ce+dice": lambda x, t: ce(x, t) + dice(x, t),
            "focal": lambda x, t: F.focal_loss(x, t, gamma=2.0, weight=w)}[name]


def make_optimizer(cfg, params):
    if cfg["optimizer"] == "adam":
        return optim.Adam(params, lr=cfg["lr"], betas=tuple(cfg["betas"]),
                          weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "sgd":
        return optim.SGD(params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    return optim.Adagrad(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def level_masks(masks, level):
    """The labels at decoder level ``level`` (``1 / 2**level`` of the size) for deep
    supervision: of each ``s x s`` block (``s = 2**level``) the pixel at (s/2, s/2), the one
    nearest the block's centre."""
    s = 2 ** level
    return masks[:, s // 2::s, s // 2::s]


def deep_supervision_loss(loss_fn, logits, aux, masks, batch_masks):
    """The training loss with deep supervision: the output's ``loss_fn`` and each auxiliary
    head's (level i, ``aux[i - 1]``) against its level's labels (``level_masks``), weighted
    1, 1/2, 1/4, ... and divided by the weights' sum (nnU-Net's weighting, the lowest
    level kept)."""
    weights = [0.5 ** level for level in range(len(aux) + 1)]
    total = loss_fn(logits, masks, batch_masks)
    for level, (w, head) in enumerate(zip(weights[1:], aux), start=1):
        total = total + loss_fn(head, level_masks(masks, level),
                                level_masks(batch_masks, level)) * w
    return total * (1.0 / sum(weights))


def learning_rate(cfg, epoch):
    """The learning rate of ``epoch`` (0-based): constant, or cosine decay to 1% of it."""
    if cfg["schedule"] == "cosine":
        return cfg["lr"] * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / cfg["epochs"])))
    return cfg["lr"]


def split_seed_of(cfg):
    """The seed of the split of a folder by patient (or slice), and of the phantom's slices:
    ``--split-seed``, or ``--seed`` when not given."""
    return cfg["seed"] if cfg.get("split_seed") is None else cfg["split_seed"]


def load_data(cfg, say):
    """Train and validation splits for the configuration."""
    split_seed = split_seed_of(cfg)
    if cfg["data"] is None:
        say(f"No --data given: training on {cfg['phantom_train']} SYNTHETIC phantom slices "
            f"(cmr.phantom), validating on {cfg['phantom_val']} others. Real results need "
            "real data: --data DIR.")
        return (phantom.make_phantom(cfg["phantom_train"], seed=split_seed),
                phantom.make_phantom(cfg["phantom_val"], seed=split_seed + 10_000))
    train, val = data.load_dataset(cfg["data"], seed=split_seed)
    if cfg["extra_data"]:
        extra_train, extra_val = data.load_dataset(cfg["extra_data"], seed=split_seed)
        if cfg["extra_transpose"]:    # acdc96 is stored transposed relative to the cmr set
            extra_train, extra_val = extra_train.transposed(), extra_val.transposed()
        train = data.Split.concatenate([train, extra_train])
        if cfg["extra_val"]:          # choose the best epoch on both validation parts
            val = data.Split.concatenate([val, extra_val])
    parts = "training and validation parts" if cfg["extra_val"] else "training part"
    say(f"Data: {len(train)} training and {len(val)} validation slices from {cfg['data']}"
        + (f" (+ {parts} of {cfg['extra_data']})" if cfg["extra_data"] else ""))
    return train, val


class NonFiniteLoss(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after ``interrupted.npz`` was written; the message says where
    the weights are and how to continue."""


def _duration(seconds):
    """``45 s``, ``12 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def _model_mismatch(saved, built):
    """The settings in which a checkpoint's U-Net (``saved``) and the model built
    (``built``) differ, e.g. ``base 16 vs 32``; empty if none."""
    saved = dict(ADDED_SETTINGS, **saved)        # a checkpoint older than a setting
    return ", ".join(f"{k} {saved.get(k)} (checkpoint) vs {v} (this run)"
                     for k, v in built.items() if saved.get(k) != v)


def run(cfg, out, resume=False, say=print, progress=True, overwrite=False,
        world=distributed.OneProcess()):
    """Train with configuration ``cfg`` into folder ``out``; returns the history (a list with
    one dict per epoch). ``world``: this rank's share of a data-parallel run
    (``cmr.distributed``; only rank 0 prepares the folder and writes files).

    A folder that holds an earlier run is refused unless ``resume`` (continue it from its
    ``last.npz``; from the start if it has only its ``config.json``) or ``overwrite`` (delete
    its files first). Each epoch writes ``best.npz`` (when the score improved) before
    ``last.npz``, the state that records it, so that a kill at any moment loses no model;
    ``--resume`` removes what a killed write left behind."""
    with output_folder(out) as out:
        ready, refused = None, None
        if world.is_root:
            try:
                ready = runfolder.prepare(out, resume, overwrite, say)
            except (ValueError, checkpoint.CheckpointError) as err:
                refused = str(err)
        ready, refused = world.from_root([ready, refused], "preparation of the run folder")
        if refused is not None:
            if not world.is_root:
                raise SystemExit(2)             # rank 0 says why
            raise ValueError(refused)
        with precision(cfg):
            return _train(cfg, out, ready, say, progress, world)


@contextlib.contextmanager
def precision(cfg):
    """The run's precision of the convolutions, ``cfg["precision"]``, while it trains: on the
    CUDA backend ``tf32`` runs the float32 convolutions on the tensor cores
    (``CudaConfig(precision="tf32")``, kernels/conv_tf32.cu); on the NumPy backend it is the
    emulation of their rounding (``numpy_backend.set_precision``). The setting before is
    restored after."""
    if cfg["backend"] == "cuda":
        from minicnn.backend.cuda import config as cuda_config
        with cuda_config.configured(dataclasses.replace(cuda_config.current(),
                                                        precision=cfg["precision"])):
            yield
        return
    previous = numpy_backend.set_precision(cfg["precision"])
    try:
        yield
    finally:
        numpy_backend.set_precision(previous)


def _train(cfg, out, resume, say, progress, world):
    from tqdm import tqdm
    device = "cuda" if cfg["backend"] == "cuda" else "cpu"
    minicnn.backend.get(device)                      # a clear error if CUDA is unusable
    train, val = load_data(cfg, say)
    minicnn.manual_seed(cfg["seed"])
    model = UNet(1, 4, cfg["base"], cfg["depth"], cfg["init"], cfg["norm"],
                 cfg["deep_supervision"]).to(device)
    opt = make_optimizer(cfg, model.parameters())
    rng = np.random.default_rng(cfg["seed"])
    history, start, best = [], 0, -1.0
    if resume:
        meta, params, opt_state = checkpoint.load(out / "last.npz")
        mismatch = _model_mismatch(meta["model"], model.config)
        if mismatch:
            raise checkpoint.CheckpointError(f"{out / 'last.npz'} holds another U-Net: "
                                             f"{mismatch}")
        model.load_state_dict(params)
        opt.load_state_dict({"hyper": meta["optimizer"]["hyper"],
                             "steps": meta["optimizer"]["steps"], "state": opt_state})
        rng.bit_generator.state = meta["rng"]
        history, start, best = meta["history"], meta["epoch"], meta["best"]
        say(f"Resuming from {out / 'last.npz'} after epoch {start}")
    world.broadcast_parameters(model.parameters())      # every rank starts from rank 0's
    if world.is_root:
        # the log is the history of last.npz: a killed epoch's line is not repeated
        (out / "log.jsonl").write_text("".join(_log_line(record) for record in history))
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
    say(f"U-Net base {cfg['base']}, depth {cfg['depth']}, norm {cfg['norm']}: "
        f"{model.num_parameters():,} parameters;"
        f" backend {cfg['backend']}"
        + ("" if cfg["precision"] == "fp32" else "; TF32 convolutions"
           + (" (tensor cores)" if cfg["backend"] == "cuda" else " (emulated)"))
        + f"; loss {cfg['loss']}"
        + (" with deep supervision" if cfg["deep_supervision"] else "")
        + f"; {cfg['optimizer']} lr {cfg['lr']}"
        + (f"; {world.size} ranks" if world.size > 1 else ""))
    loss_fn = world.loss(cfg["loss"], lambda term: make_loss(term, cfg["class_weights"]),
                         cfg["class_weights"])     # one rank's term of the batch's loss
    aug = AugmentConfig.named(cfg["augment"])

    def save(name, epoch, **extra):
        if not world.is_root:               # rank 0 writes (every rank holds the same state)
            return
        checkpoint.save(out / name, model, {"train": cfg, "epoch": epoch, "best": best,
                                            "history": history, "rng": rng.bit_generator.state,
                                            **extra}, opt)
    done, seen, run_eta, session_start = start, 0, "", time.perf_counter()
    try:
        for epoch in range(start, cfg["epochs"]):
            opt.lr = learning_rate(cfg, epoch)
            model.train()
            losses, seen, t0 = [], 0, time.perf_counter()
            with tqdm(total=len(train), unit="img", desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                      disable=not progress, leave=False) as bar:
                for idx in data.iterate_minibatches(train, cfg["batch_size"], rng):
                    images, masks = augment_batch(train.images[idx], train.masks[idx], rng, aug)
                    mine = world.share(len(idx))        # this rank's images (all: one process)
                    x = minicnn.Tensor(np.ascontiguousarray(images[mine, None],
                                                            dtype=np.float32)).to(device)
                    mine_masks = masks[mine].astype(np.int64)
                    if cfg["deep_supervision"]:
                        loss = deep_supervision_loss(loss_fn, *model(x, aux=True), mine_masks,
                                                     masks)
                    else:
                        loss = loss_fn(model(x), mine_masks, masks)
                    opt.zero_grad()
                    loss.backward()
                    # the gradients and the loss summed over the ranks (one process: unchanged)
                    value = world.sum_gradients(opt.params, loss.item())
                    if not math.isfinite(value):
                        raise NonFiniteLoss(f"loss became {value} in epoch {epoch + 1}")
                    opt.step()
                    losses.append(value)
                    seen += len(idx)
                    bar.update(len(idx))
                    bar.set_postfix_str(f"loss {value:.4f}{run_eta}")
            train_time = time.perf_counter() - t0
            model.eval()
            result = world.evaluate(model, val, device, cfg["flip_tta"])   # split, gathered
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": opt.lr,
                      "images_per_s": seen / train_time, "epoch_s": time.perf_counter() - t0,
                      "val_dice": result["dice"], "val_hd95": result["hd95"]}
            history.append(record)
            improved = result["dice"]["mean"] > best
            best = max(best, result["dice"]["mean"])
            if world.is_root:
                with open(out / "log.jsonl", "a") as f:
                    f.write(_log_line(record))
            left = cfg["epochs"] - epoch - 1
            per_epoch = (time.perf_counter() - session_start) / (epoch + 1 - start)
            run_eta = f", run ETA {_duration(left * per_epoch)}" if left else ""
            say(f"epoch {epoch + 1:3d}/{cfg['epochs']}  loss {record['loss']:.4f}  "
                f"val Dice RV {result['dice']['RV']:.3f} Myo {result['dice']['Myo']:.3f} "
                f"LV {result['dice']['LV']:.3f} mean {result['dice']['mean']:.3f}  "
                f"({record['images_per_s']:.1f} img/s, {record['epoch_s']:.0f} s{run_eta})"
                + ("  *best*" if improved else ""))
            if improved:                 # best.npz first: last.npz records that it exists
                save("best.npz", epoch + 1)
            save("last.npz", epoch + 1)
            done, seen = epoch + 1, 0
            if world.is_root and (out / "interrupted.npz").is_file():
                (out / "interrupted.npz").unlink()
                say("Removed interrupted.npz: last.npz is past it")
            if world.is_root:
                plot_curves(history, out / "curves.png")
    except KeyboardInterrupt:
        where = (f"in epoch {done + 1}, after {seen} of its {len(train)} images"
                 if seen else f"after epoch {done}")
        save("interrupted.npz", done, interrupted_in_epoch=done + 1, images_seen=seen)
        raise TrainingInterrupted(
            f"{out / 'interrupted.npz'} holds the weights {where}; --resume continues "
            f"exactly from {out / 'last.npz'} (end of epoch {done})") from None
    if history:
        say("Final validation:\n" + format_table({"dice": history[-1]["val_dice"],
                                                  "hd95": history[-1]["val_hd95"]}))
    return history


def _log_line(record):
    """One line of log.jsonl: strict JSON (an undefined HD95 is ``null``)."""
    return json.dumps(jsonable(record), allow_nan=False) + "\n"


def member_configs(cfg):
    """The configuration of each ensemble member: seeds ``seed``, ``seed + 1``, ...; one split
    (``split_seed``, default ``seed``) for all, so that they can be averaged and scored on the
    same held-out patients."""
    return [dict(cfg, seed=cfg["seed"] + k, split_seed=split_seed_of(cfg), members=1)
            for k in range(cfg["members"])]


def _train_member(k, cfg, out, resume, progress):
    """One member (also the entry point of a ``--jobs`` worker process); a member folder
    without an epoch to resume from starts afresh (the ensemble's folder was claimed)."""
    def say(message):
        print(f"[member {k}] {message}", flush=True)
    resume = resume and bool(runfolder.existing_run(out))
    run(cfg, out, resume=resume, say=say, progress=progress, overwrite=not resume)


def run_ensemble(cfg, out, resume=False, jobs=1, say=print, progress=True, overwrite=False):
    """Train ``cfg['members']`` models (``member_configs``) into ``out/member0``, ... ,
    ``jobs`` at a time (worker processes when more than one), then write ``out/ensemble.json``
    (the members' ``best.npz``) and score the ensemble on the validation split; returns that
    result (``cmr.metrics.evaluate_masks``). ``resume`` continues every unfinished member;
    an earlier run in ``out`` is refused without ``resume`` or ``overwrite``, as in ``run``."""
    with output_folder(out) as out:
        if not resume:
            runfolder.claim(out, overwrite, say)
        return _train_ensemble(cfg, out, resume, jobs, say, progress)


def _train_ensemble(cfg, out, resume, jobs, say, progress):
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    configs = member_configs(cfg)
    folders = [out / f"member{k}" for k in range(len(configs))]
    say(f"Ensemble of {len(configs)} U-Nets (seeds {configs[0]['seed']}-{configs[-1]['seed']},"
        f" split seed {configs[0]['split_seed']}), {jobs} at a time, into {out}/member*")
    if jobs == 1:
        for k, (member, folder) in enumerate(zip(configs, folders)):
            _train_member(k, member, folder, resume, progress)
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")     # the workers share the cores: a thread each
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_train_member, k, member, folder, resume, False)
                       for k, (member, folder) in enumerate(zip(configs, folders))]
            for future in futures:
                future.result()
    (out / "ensemble.json").write_text(json.dumps(
        {"members": [f"{folder.name}/best.npz" for folder in folders]}, indent=1))
    device = "cuda" if cfg["backend"] == "cuda" else "cpu"
    models = checkpoint.load_models([out / "ensemble.json"], device)
    _, val = load_data(configs[0], lambda *_: None)
    result = evaluate(models, val, device, flip_tta=cfg["flip_tta"])
    (out / "ensemble_val.json").write_text(json.dumps(jsonable(result), indent=1,
                                                      allow_nan=False))
    say(f"Ensemble of the {len(models)} best.npz on the validation split:\n"
        + format_table(result))
    return result


def plot_curves(history, path):
    """Training loss and validation Dice per epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["loss"] for h in history], "k-o", ms=3)
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    for c, colour in zip(CLASSES + ("mean",), ("tab:red", "tab:green", "tab:blue", "k")):
        b.plot(epochs, [h["val_dice"][c] for h in history], "-o", ms=3, color=colour, label=c)
    b.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    b.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cmr.train", description=__doc__,
                                epilog=presets_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data folder (coursework root, flat folder with manifest.json,"
                   " or image/+mask/); default: synthetic phantom")
    p.add_argument("--extra-data", help="a second data folder whose training split is added")
    p.add_argument("--extra-transpose", action="store_const", const=True,
                   help="transpose the --extra-data slices (acdc96 vs the coursework set)")
    p.add_argument("--no-extra-transpose", dest="extra_transpose", action="store_const",
                   const=False, help="do not (a folder in the coursework orientation, e.g. "
                   "acdc96vol, with a preset that transposes)")
    p.add_argument("--extra-val", action="store_const", const=True,
                   help="add the --extra-data folder's validation split to the validation "
                   "set, which picks the best epoch (best.npz)")
    p.add_argument("--backend", choices=["numpy", "cuda"])
    p.add_argument("--precision", choices=numpy_backend.PRECISIONS,
                   help="of the convolutions: fp32 (default), or tf32, their float32 operands "
                   "rounded to TF32's 10 mantissa bits: on the CUDA backend the tensor-core "
                   "kernels (kernels/conv_tf32.cu; no GPU has timed them yet), on the NumPy "
                   "backend an emulation of their rounding (to measure what it costs in "
                   "accuracy)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults; "
                   "explicit flags override it (each one's settings and time: below)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--betas", type=float, nargs=2)
    p.add_argument("--class-weights", type=float, nargs=4)
    p.add_argument("--loss", choices=["ce", "dice", "ce+dice", "focal"])
    p.add_argument("--optimizer", choices=["adam", "sgd", "adagrad"])
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--base", type=int, help="U-Net width (64 in the original)")
    p.add_argument("--depth", type=int, help="number of poolings (4)")
    p.add_argument("--init", choices=["torch", "he"], help="weight initialisation (torch: "
                   "PyTorch's default, as the original; he: N(0, 2/fan_in))")
    p.add_argument("--norm", choices=list(NORMS), help="normalisation after each 3x3 conv "
                   "(none: the original network; instance; group)")
    p.add_argument("--deep-supervision", action="store_const", const=True,
                   help="add the loss of 1x1 heads on the decoder's lower levels against the "
                   "labels at their scale, weighted 1/2, 1/4, ... (training only: the "
                   "prediction is unchanged; cmr.unet)")
    p.add_argument("--augment", choices=["default", "strong", "none"],
                   help="augmentation ranges (cmr.augment.AugmentConfig; default: rotation "
                   "+-15 deg, zoom 0.9-1.1, elastic, gamma/contrast/brightness)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                   help="the same as --augment none")
    p.add_argument("--flip-tta", action="store_const", const=True,
                   help="validate with test-time left-right flips")
    p.add_argument("--phantom-train", type=int, help="phantom training slices (no --data)")
    p.add_argument("--phantom-val", type=int)
    p.add_argument("--seed", type=int, help="initialisation, augmentation, batch order, and "
                   "the split of a folder into train/val/test unless --split-seed is given (0)")
    p.add_argument("--split-seed", type=int, help="seed of the train/val/test split by patient "
                   "of --data and --extra-data folders (default: --seed); keep it fixed to "
                   "train several seeds on the same patients")
    p.add_argument("--members", type=int, help="train an ensemble of this many models, seeds "
                   "SEED, SEED+1, ... on one split, into OUT/member0, ... (1)")
    p.add_argument("--jobs", type=int, default=1, help="with --members: train this many at "
                   "a time, in worker processes of one thread each (1)")
    p.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.npz (an "
                   "ensemble: every unfinished member) with the run's own settings; of the "
                   "training flags only --epochs may change, another value is refused")
    p.add_argument("--force", action="store_true", help="replace the run already in OUT "
                   "(its checkpoints, log and config are deleted); without it such a folder "
                   "is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--mpi-timeout", type=float, default=600, help="under mpiexec (data "
                   "parallelism, docs/data_parallel.md): seconds a rank waits for the others "
                   "in a collective before it stops the job (600)")
    return p


def config_from_args(args):
    cfg = dict(DEFAULTS)
    if args.preset:
        cfg.update(PRESETS[args.preset])
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
    for key in ("epochs", "batch_size", "base", "depth", "phantom_train", "phantom_val",
                "members"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ValueError(f"--lr must be > 0, got {cfg['lr']}")
    if cfg["extra_val"] and not cfg["extra_data"]:
        raise ValueError("--extra-val needs --extra-data (the folder whose validation split "
                         "it adds)")
    return cfg


#: The training settings that --resume lets change; every other flag must agree with the run.
RESUME_MAY_CHANGE = ("epochs",)


def resumed_config(args, out):
    """The configuration --resume continues with: the saved run's, with --epochs applied.
    A preset or flag that contradicts the saved run raises ValueError, in one line."""
    saved = dict(DEFAULTS, **runfolder.saved_config(out))   # a key added since the run: its default
    given = dict(PRESETS[args.preset]) if args.preset else {}
    given.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None})

    def same(key, a, b):
        if key in ("data", "extra_data") and a and b:
            return Path(a).resolve() == Path(b).resolve()
        return json.loads(json.dumps(a)) == json.loads(json.dumps(b))
    clash = [f"--{k.replace('_', '-')} {v} (the run has {saved[k]})" for k, v in given.items()
             if k not in RESUME_MAY_CHANGE and not same(k, v, saved[k])]
    if clash:
        raise ValueError(f"--resume continues the run in {out} with its own settings; "
                         f"{', '.join(clash)}: only --epochs may change (a new run: another "
                         "--out, or --force)")
    if "epochs" in given:
        saved["epochs"] = given["epochs"]
    return saved


def main(argv=None):
    ranks = distributed.launched_size(os.environ)   # > 1 under mpiexec: data parallelism
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.mpi_timeout <= 0:
        parser.error(f"--mpi-timeout must be > 0, got {args.mpi_timeout}")
    if args.resume and args.force:
        parser.exit(2, "error: --resume continues the run in --out and --force replaces it: "
                       "choose one\n")
    with one_line_errors(parser):
        cfg = config_from_args(args)
        out = Path(args.out)
        if args.resume:
            cfg = resumed_config(args, out)
        world = distributed.world(ranks, cfg["backend"], args.mpi_timeout)
        world.check_launch(cfg)
        try:
            if cfg["members"] > 1:
                run_ensemble(cfg, out, resume=args.resume, jobs=min(args.jobs, cfg["members"]),
                             progress=not args.no_progress, overwrite=args.force)
            else:
                run(cfg, out, resume=args.resume, progress=not args.no_progress and world.is_root,
                    overwrite=args.force, say=print if world.is_root else lambda *_: None,
                    world=world)
        except NonFiniteLoss as err:
            parser.exit(1, f"error: {err}; stopped. The last good checkpoint is "
                           f"{out / 'last.npz'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
