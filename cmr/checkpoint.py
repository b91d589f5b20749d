"""Checkpoints as plain data: one ``.npz`` of arrays plus a JSON string, never pickle.

Layout of the archive::

    meta                 JSON text: {"model": UNet config, "train": training config,
                                     "epoch": completed epochs, "rng": generator state,
                                     "optimizer": {"name", "hyper", "steps"}, ...}
    param/NAME           one array per model parameter (state_dict names)
    optim/I/KEY          the optimizer's per-parameter state (e.g. exp_avg of parameter I)

``save`` writes to a temporary file in the same folder (``.NAME-XXXXXXXX.npz``), flushes it
to the disk (fsync) and only then renames it over the target, so a crash, a kill, a full disk
or a power cut mid-write never leaves a half-written or empty checkpoint under the real name;
a kill can leave the temporary file, which ``remove_stale_temporaries`` deletes. Checkpoints
get the permissions of any other output (0666 less the umask). ``load`` reads with
``allow_pickle=False``; a damaged file is a one-line ``CheckpointError``.

``export`` writes a model to ship: its parameters alone (float16 by default, read back as
float32) and its metadata, no optimizer state. The package ships one (``SHIPPED``, its model
card beside it), which ``cmr.predict`` and ``cmr.evaluate`` use when no ``--checkpoint`` is
given.
"""
import json
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from .metrics import jsonable


class CheckpointError(ValueError):
    """An unreadable, unwritable or inconsistent checkpoint (the message names the file)."""


#: The model that ships with the package (``cmr/models/README.md`` is its model card).
SHIPPED = Path(__file__).parent / "models" / "cpu16_acdc_ds.npz"


def _temporary_name(path):
    return path.parent / f".{path.stem}-{secrets.token_hex(4)}.npz"


def _write(f, arrays):
    """Write the archive into the open file ``f`` (a seam for the tests' injected faults)."""
    np.savez(f, **arrays)


def _discard(tmp):
    """Remove a temporary file after a failed write (a kill skips this: see
    ``remove_stale_temporaries``)."""
    tmp.unlink(missing_ok=True)


def _sync_folder(folder):
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder, names=("last", "best", "interrupted")):
    """Delete the temporary files that a killed ``save`` left in ``folder`` (for the
    checkpoints ``names``); returns the paths removed."""
    stale = [p for name in names for p in Path(folder).glob(f".{name}-*.npz") if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


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
    arrays["meta"] = np.array(json.dumps(jsonable(meta), allow_nan=False))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(fd, "wb") as f:
            _write(f, arrays)
            f.flush()
            os.fsync(f.fileno())        # the data is on the disk before the name points at it
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException as err:
        if tmp is not None:
            _discard(tmp)
        if isinstance(err, OSError):
            keep = f"; the previous {path.name} is unchanged" if path.is_file() else ""
            raise CheckpointError(f"cannot write {path}: {err.strerror or err}{keep}") from None
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
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a readable minicnn checkpoint "
                              f"({_damage(err)})") from None
    if "model" not in meta:
        raise CheckpointError(f"{path} has no model configuration in its metadata")
    states = [optim.get(i, {}) for i in range(len(meta.get("optimizer", {}).get("steps", [])))]
    return meta, params, states


def export(src, dst, dtype="float16", **card):
    """Write the model of checkpoint ``src`` to ``dst`` for shipping: its parameters in
    ``dtype`` (float16 halves the size; ``load_model`` reads them back as float32), its
    model and training configuration, the epoch, and ``card`` (JSON data: what the model
    card states, e.g. its scores) under ``meta["card"]``; no optimizer state, no history.
    The data folders of the training configuration keep their last part only
    (``DATA/cmr``): a shipped file names no path of the machine that trained it."""
    meta, params, _ = load(src)
    for name, value in params.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value.astype(dtype))):
            raise CheckpointError(f"{src}: parameter {name} does not fit in {dtype}")
    arrays = {f"param/{k}": v.astype(dtype) if v.dtype.kind == "f" else v
              for k, v in params.items()}
    kept = {k: meta[k] for k in ("model", "train", "epoch", "best") if k in meta}
    if "train" in kept:
        kept["train"] = {k: f"DATA/{Path(v).name}" if k in ("data", "extra_data") and v else v
                         for k, v in kept["train"].items()}
    kept["card"] = card
    arrays["meta"] = np.array(json.dumps(jsonable(kept), allow_nan=False))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as f:
        _write(f, arrays)
    return dst


def _damage(err):
    """What is wrong with an unreadable archive, in a few words."""
    text = str(err)
    if isinstance(err, EOFError) or "File is not a zip file" in text:
        return "truncated, empty or not an .npz archive"
    if "pickled" in text:        # NumPy's guess for any file that is not an archive
        return "not an .npz archive"
    if "CRC" in text or isinstance(err, zipfile.BadZipFile):
        return f"damaged: {text}"
    if isinstance(err, KeyError):
        return f"no entry {text}"
    return text.splitlines()[0] if text else type(err).__name__


def resolve(paths):
    """The checkpoint files that ``paths`` name: a ``.npz`` itself; an ``ensemble.json``
    (``cmr.train --members``) its members; a run folder its ``ensemble.json`` if it has one,
    else its ``best.npz``; none (``None`` or empty): the shipped model, ``SHIPPED``."""
    if not paths:
        if not SHIPPED.is_file():
            raise CheckpointError(f"no --checkpoint given and the shipped model {SHIPPED} is "
                                  "missing from this installation")
        return [SHIPPED]
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
    params = {k: v.astype(np.float32) if v.dtype == np.float16 else v    # an exported model
              for k, v in params.items()}
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
