"""A run folder of ``cmr.train`` (``--out``): which files make a run, and what a new run or a
``--resume`` may do with a folder that holds one.

A new run never replaces an earlier one silently: it is refused, or, with ``--force``, the
earlier run's files are deleted and that is said. A resume first removes the temporary
files that a killed checkpoint write left (``cmr.checkpoint.remove_stale_temporaries``).
"""
import json
import shutil
from pathlib import Path

from . import checkpoint

#: The files of a run folder (a --members ensemble adds its own and member folders).
RUN_FILES = ("best.npz", "last.npz", "interrupted.npz", "log.jsonl", "curves.png",
             "config.json")
ENSEMBLE_FILES = ("ensemble.json", "ensemble_val.json")


def existing_run(out):
    """The names of the files and member folders of an earlier run in the folder ``out``."""
    out = Path(out)
    found = [name for name in RUN_FILES + ENSEMBLE_FILES if (out / name).is_file()]
    return found + sorted(p.name for p in out.glob("member*") if existing_run(p))


def claim(out, overwrite, say):
    """Make sure a new run may write into ``out``: an earlier run there is refused (one line
    naming --resume and --force), or, with ``overwrite``, its files are deleted (said)."""
    found = existing_run(out)
    if not found:
        return
    if not overwrite:
        raise ValueError(f"{out} already holds a run ({', '.join(found)}); continue it with "
                         "--resume, or replace it with --force (deletes those files), or "
                         "choose another --out")
    for name in found:
        path = Path(out) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    say(f"--force: deleted the earlier run's {', '.join(found)} in {out}")


def prepare(out, resume, overwrite, say):
    """Get the folder ``out`` ready for a run: claim it for a new run (``claim``), remove
    stale temporary checkpoint files; returns whether the run resumes from a ``last.npz``."""
    if not resume:
        claim(out, overwrite, say)
    stale = checkpoint.remove_stale_temporaries(out)
    if stale:
        say(f"Removed {len(stale)} partial checkpoint file(s) of an interrupted write: "
            + ", ".join(p.name for p in stale))
    return resume and _resumable(out, say)


def _resumable(out, say):
    """Whether the run in ``out`` has a ``last.npz`` to continue from; if not, a run that
    was started (its ``config.json``) starts again from epoch 1."""
    if (out / "last.npz").is_file():
        return True
    if not (out / "config.json").is_file():
        saved_config(out)                       # raises: nothing to resume
    say(f"{out} has no last.npz (no epoch was completed): starting from epoch 1")
    return False


def saved_config(out):
    """The configuration of the run in ``out`` that --resume continues: its last.npz's, or,
    before the first epoch ended (or for an ensemble), its config.json."""
    out = Path(out)
    if (out / "last.npz").is_file():
        return checkpoint.load(out / "last.npz")[0]["train"]
    if (out / "config.json").is_file():
        try:
            return json.loads((out / "config.json").read_text())
        except ValueError as err:
            raise checkpoint.CheckpointError(f"{out / 'config.json'} is not readable JSON: "
                                             f"{err}") from None
    raise checkpoint.CheckpointError(f"nothing to resume in {out}: no last.npz or config.json")
