"""Checkpoints as plain data: one ``.npz`` of arrays plus a JSON string, never pickle.

Layout of the archive::

    meta                 JSON text: {"model": UNet config, "train": training config,
                                     "epoch": completed epochs, "rng": generator state,
                                     "optimizer": {"name", "hyper", "steps"}, ...}
    param/NAME           one array per model parameter (state_dict names)
    optim/I/KEY          the optimizer's per-parameter state (e.g. exp_avg of parameter I)

``save`` writes to a temporary file in the same folder and renames it over the target, so a
crash or Ctrl-C mid-write never leaves a half-written checkpoint. ``load`` reads with
``allow_pickle=False``.
"""
import json
import os
import tempfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """An unreadable or inconsistent checkpoint (the message names the file)."""


def save(path, model, meta, optimizer=None):
    """Atomically write ``model``'s parameters, ``meta`` (JSON-able) and the optimizer state."""
    path = Path(path)
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    meta = dict(meta, model=model.config)
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {"name": type(optimizer).__name__, "hyper": state["hyper"],
                             "steps": state["steps"]}
        for i, entry in enumerate(state["state"]):
            for key, value in entry.items():
                arrays[f"optim/{i}/{key}"] = value
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    """``(meta, params, optim_state)``: the JSON dict, ``{name: array}``, and the optimizer's
    per-parameter state as a list of dicts (empty if none was saved)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            params = {k[len("param/"):]: archive[k] for k in archive.files
                      if k.startswith("param/")}
            optim = {}
            for k in archive.files:
                if k.startswith("optim/"):
                    _, i, key = k.split("/", 2)
                    optim.setdefault(int(i), {})[key] = archive[k]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable minicnn checkpoint: {err}") from None
    if "model" not in meta:
        raise CheckpointError(f"{path} has no model configuration in its metadata")
    states = [optim.get(i, {}) for i in range(len(meta.get("optimizer", {}).get("steps", [])))]
    return meta, params, states


def resolve(paths):
    """The checkpoint files that ``paths`` name: a ``.npz`` itself; an ``ensemble.json``
    (``cmr.train --members``) its members; a run folder its ``ensemble.json`` if it has one,
    else its ``best.npz``."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            ensemble = path / "ensemble.json"
            path = ensemble if ensemble.is_file() else path / "best.npz"
        if path.suffix == ".json":
            try:
                members = json.loads(path.read_text())["members"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"{path} is not an ensemble file: {err}") from None
            files += [path.parent / member for member in members]
        else:
            files.append(path)
    return files


def load_model(path, device="cpu"):
    """The UNet stored in ``path``, weights loaded, on ``device``, in eval mode."""
    from .unet import UNet
    meta, params, _ = load(path)
    try:
        model = UNet(**meta["model"])
        model.load_state_dict(params)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return model.to(device).eval(), meta


def load_models(paths, device="cpu"):
    """The models that ``paths`` name (``resolve``), loaded on ``device``: one, or an
    ensemble's members."""
    return [load_model(path, device)[0] for path in resolve(paths)]
