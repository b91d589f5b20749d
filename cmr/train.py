"""Train the padded U-Net on cardiac MR slices: ``python -m cmr.train [--data DIR] ...``.

Defaults are the original work's recipe: Adam (lr 2e-4, betas 0.9/0.99), batch 25, 50 epochs,
cross-entropy with class weights [0.1, 0.3, 0.3, 0.3], U-Net width 64, augmentation on.
Without ``--data`` it trains on synthetic phantom slices (``cmr.phantom``), so that a newcomer
sees the whole job run; real results need real data.

Output folder (``--out``): ``last.npz`` (after every epoch) and ``best.npz`` (best mean
validation Dice) checkpoints, ``log.jsonl`` (one line per epoch), ``curves.png`` and
``config.json``. ``--resume`` continues from ``last.npz`` to the same result as an
uninterrupted run; Ctrl-C writes ``interrupted.npz`` (the weights at that moment) and keeps
``last.npz`` for an exact resume.

``--members N`` trains an ensemble: N runs with seeds ``seed``, ``seed + 1``, ... on the same
split (``--split-seed``, default ``--seed``), into ``OUT/member0`` ... (each a full run folder
as above; ``--jobs 2`` trains two at a time), then writes ``OUT/ensemble.json`` (the members'
``best.npz``) and the ensemble's validation scores, ``OUT/ensemble_val.json``.
``cmr.evaluate``/``cmr.predict --checkpoint OUT`` load every member and average their class
probabilities.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn import functional as F, optim

from . import checkpoint, data, distributed, phantom
from .augment import AugmentConfig, augment_batch
from .evaluate import evaluate, format_table
from .unet import NORMS, UNet

CLASSES = ("RV", "Myo", "LV")
DEFAULTS = dict(data=None, backend="numpy", epochs=50, batch_size=25, lr=2e-4, betas=(0.9, 0.99),
                class_weights=(0.1, 0.3, 0.3, 0.3), loss="ce", optimizer="adam", base=64,
                depth=4, init="torch", norm="none", augment="default", seed=0,
                schedule="constant", weight_decay=0.0, phantom_train=200, phantom_val=40,
                extra_data=None, extra_transpose=False, extra_val=False, flip_tta=False,
                split_seed=None, members=1)
PRESETS = {
    # the README's first command: a few minutes on a 2-core CPU, on the phantom
    "quick": dict(epochs=8, base=8, batch_size=8, lr=3e-3, loss="ce+dice", init="he",
                  phantom_train=160, phantom_val=20),
    # the original coursework recipe, as written
    "original": dict(),
    # a width-16 U-Net that a 2-core CPU trains in about 15 minutes on the 100 coursework images
    "cpu16": dict(base=16, init="he", loss="ce+dice", schedule="cosine", lr=1e-3, batch_size=10,
                  epochs=60),
    # the original width (31M parameters) for a GPU (--backend cuda): about 2 minutes on an H100
    "gpu64": dict(base=64, init="he", loss="ce+dice", schedule="cosine", lr=5e-4, batch_size=10,
                  epochs=100),
}
# the best recipe measured (docs/unet.md): cpu16 with instance normalisation for 50 epochs,
# meant for --data <cmr> --extra-data <acdc96> (stored transposed): 22 min on 2 idle cores
PRESETS["cpu16-acdc"] = dict(PRESETS["cpu16"], epochs=50, norm="instance", extra_transpose=True)
# the best acdc96 result on the corrected split (docs/unet.md): cpu16-acdc with strong augmentation
# for 100 epochs, scored with cmr.evaluate --min-confidence 0.75 (chosen on acdc96 val): 45-90 min
PRESETS["cpu16-acdc-strong"] = dict(PRESETS["cpu16-acdc"], epochs=100, augment="strong")
# the best recipe measured on the 100 cmr/train slices alone (docs/unet.md): gpu64 with instance
# normalisation and strong augmentation for 200 epochs (--backend cuda; about 4 min on an H200)
PRESETS["gpu64-strong"] = dict(PRESETS["gpu64"], epochs=200, norm="instance", augment="strong")
# the same recipe at width 16 (about 40 min on one CPU core), and three seeds of it as one
# ensemble: the best cmr/train-only result measured on a CPU (--jobs 2 trains two at a time)
PRESETS["cpu16-strong"] = dict(PRESETS["cpu16"], epochs=200, norm="instance", augment="strong")
PRESETS["cpu16-strong-x3"] = dict(PRESETS["cpu16-strong"], members=3)
# the recipe meant for the acdc96 target (docs/unet.md; measured on the old, leaking split only):
# three seeds of gpu64-strong for 30 epochs on --data <cmr> --extra-data <acdc96> as one
# ensemble (--backend cuda --jobs 3; the three side by side trained in 4 min on an H200),
# scored with cmr.evaluate --min-confidence 0.6
PRESETS["gpu64-acdc-x3"] = dict(PRESETS["gpu64-strong"], epochs=30, extra_transpose=True,
                                members=3)


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


def run(cfg, out, resume=False, say=print, progress=True, world=distributed.OneProcess()):
    """Train with configuration ``cfg`` into folder ``out``; returns the history (a list with
    one dict per epoch). ``world``: this rank's share of a data-parallel run
    (``cmr.distributed``; only rank 0 writes files)."""
    from tqdm import tqdm
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cfg["backend"] == "cuda" else "cpu"
    minicnn.backend.get(device)                      # a clear error if CUDA is unusable
    train, val = load_data(cfg, say)
    minicnn.manual_seed(cfg["seed"])
    model = UNet(1, 4, cfg["base"], cfg["depth"], cfg["init"], cfg["norm"]).to(device)
    opt = make_optimizer(cfg, model.parameters())
    rng = np.random.default_rng(cfg["seed"])
    history, start, best = [], 0, -1.0
    if resume:
        meta, params, opt_state = checkpoint.load(out / "last.npz")
        model.load_state_dict(params)
        opt.load_state_dict({"hyper": meta["optimizer"]["hyper"],
                             "steps": meta["optimizer"]["steps"], "state": opt_state})
        rng.bit_generator.state = meta["rng"]
        history, start, best = meta["history"], meta["epoch"], meta["best"]
        say(f"Resuming from {out / 'last.npz'} after epoch {start}")
    elif world.is_root:
        (out / "log.jsonl").unlink(missing_ok=True)     # a new run in an old folder: a new log
    world.broadcast_parameters(model.parameters())      # every rank starts from rank 0's
    if world.is_root:
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
    say(f"U-Net base {cfg['base']}, depth {cfg['depth']}, norm {cfg['norm']}: "
        f"{model.num_parameters():,} parameters;"
        f" backend {cfg['backend']}; loss {cfg['loss']}; {cfg['optimizer']} lr {cfg['lr']}"
        + (f"; {world.size} ranks" if world.size > 1 else ""))
    loss_fn = world.loss(cfg["loss"], lambda term: make_loss(term, cfg["class_weights"]),
                         cfg["class_weights"])     # one rank's term of the batch's loss
    aug = AugmentConfig.named(cfg["augment"])

    def save(name, epoch):
        if not world.is_root:               # rank 0 writes (every rank holds the same state)
            return
        checkpoint.save(out / name, model, {"train": cfg, "epoch": epoch, "best": best,
                                            "history": history, "rng": rng.bit_generator.state},
                        opt)
    epoch = start
    try:
        for epoch in range(start, cfg["epochs"]):
            opt.lr = learning_rate(cfg, epoch)
            model.train()
            losses, seen, t0 = [], 0, time.perf_counter()
            bar = tqdm(total=len(train), unit="img", desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                       disable=not progress, leave=False)
            for idx in data.iterate_minibatches(train, cfg["batch_size"], rng):
                images, masks = augment_batch(train.images[idx], train.masks[idx], rng, aug)
                mine = world.share(len(idx))        # this rank's images (all in one process)
                x = minicnn.Tensor(np.ascontiguousarray(images[mine, None],
                                                        dtype=np.float32)).to(device)
                loss = loss_fn(model(x), masks[mine].astype(np.int64), masks)
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
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
            bar.close()
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
                    f.write(json.dumps(record) + "\n")
            say(f"epoch {epoch + 1:3d}/{cfg['epochs']}  loss {record['loss']:.4f}  "
                f"val Dice RV {result['dice']['RV']:.3f} Myo {result['dice']['Myo']:.3f} "
                f"LV {result['dice']['LV']:.3f} mean {result['dice']['mean']:.3f}  "
                f"({record['images_per_s']:.1f} img/s, {record['epoch_s']:.0f} s)"
                + ("  *best*" if improved else ""))
            save("last.npz", epoch + 1)
            if improved:
                save("best.npz", epoch + 1)
            if world.is_root:
                plot_curves(history, out / "curves.png")
    except KeyboardInterrupt:
        save("interrupted.npz", epoch)
        say(f"\nInterrupted: weights saved to {out / 'interrupted.npz'}; "
            f"{out / 'last.npz'} (end of the last full epoch) resumes exactly with --resume")
        raise
    if history:
        say("Final validation:\n" + format_table({"dice": history[-1]["val_dice"],
                                                  "hd95": history[-1]["val_hd95"]}))
    return history


def member_configs(cfg):
    """The configuration of each ensemble member: seeds ``seed``, ``seed + 1``, ...; one split
    (``split_seed``, default ``seed``) for all, so that they can be averaged and scored on the
    same held-out patients."""
    return [dict(cfg, seed=cfg["seed"] + k, split_seed=split_seed_of(cfg), members=1)
            for k in range(cfg["members"])]


def _train_member(k, cfg, out, resume, progress):
    """One member (also the entry point of a ``--jobs`` worker process)."""
    def say(message):
        print(f"[member {k}] {message}", flush=True)
    run(cfg, out, resume=resume and (Path(out) / "last.npz").is_file(), say=say,
        progress=progress)


def run_ensemble(cfg, out, resume=False, jobs=1, say=print, progress=True):
    """Train ``cfg['members']`` models (``member_configs``) into ``out/member0``, ... ,
    ``jobs`` at a time (worker processes when more than one), then write ``out/ensemble.json``
    (the members' ``best.npz``) and score the ensemble on the validation split; returns that
    result (``cmr.metrics.evaluate_masks``). ``resume`` continues every unfinished member."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    (out / "ensemble_val.json").write_text(json.dumps(result, indent=1))
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
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data folder (coursework root, flat folder with manifest.json,"
                   " or image/+mask/); default: synthetic phantom")
    p.add_argument("--extra-data", help="a second data folder whose training split is added")
    p.add_argument("--extra-transpose", action="store_const", const=True,
                   help="transpose the --extra-data slices (acdc96 vs the coursework set)")
    p.add_argument("--extra-val", action="store_const", const=True,
                   help="add the --extra-data folder's validation split to the validation "
                   "set, which picks the best epoch (best.npz)")
    p.add_argument("--backend", choices=["numpy", "cuda"])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults; "
                   "explicit flags override it")
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
                   "ensemble: every unfinished member)")
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


def main(argv=None):
    ranks = distributed.launched_size(os.environ)   # > 1 under mpiexec: data parallelism
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.mpi_timeout <= 0:
        parser.error(f"--mpi-timeout must be > 0, got {args.mpi_timeout}")
    try:
        cfg = config_from_args(args)
        out = Path(args.out)
        if args.resume:
            ensemble = not (out / "last.npz").is_file() and (out / "config.json").is_file()
            saved = (json.loads((out / "config.json").read_text()) if ensemble
                     else checkpoint.load(out / "last.npz")[0]["train"])
            saved.update({k: v for k, v in cfg.items() if k == "epochs" and args.epochs})
            cfg = dict(DEFAULTS, **saved)   # a key added since the checkpoint: its default
        world = distributed.world(ranks, cfg["backend"], args.mpi_timeout)
        world.check_launch(cfg)
        if cfg["members"] > 1:
            run_ensemble(cfg, out, resume=args.resume, jobs=min(args.jobs, cfg["members"]),
                         progress=not args.no_progress)
        else:
            run(cfg, out, resume=args.resume, progress=not args.no_progress and world.is_root,
                say=print if world.is_root else lambda *_: None, world=world)
    except (data.CMRDataError, checkpoint.CheckpointError, ValueError,
            minicnn.backend.BackendUnavailable, distributed.LaunchError) as err:
        parser.exit(2, f"error: {err}\n")
    except NonFiniteLoss as err:
        parser.exit(1, f"error: {err}; stopped. The last good checkpoint is "
                       f"{Path(args.out) / 'last.npz'}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
