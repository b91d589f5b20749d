"""What the three command lines (``cmr.train``, ``cmr.evaluate``, ``cmr.predict``) share: one
line per failure, and output folders that are checked before the work and not left behind
empty.

Every expected failure ends the command with one line on stderr, ``error: ...``, and a
non-zero exit status: 2 for bad input (data, checkpoint, flags, an unwritable output), 130
for Ctrl-C. A problem worth knowing that does not stop the command (an RGB image converted
to grayscale, ``cmr.data.CMRDataWarning``) is one ``note: ...`` line.
"""
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

import minicnn

from . import checkpoint, data, distributed

#: The failures that are the user's to fix: their message is the whole story.
USER_ERRORS = (data.CMRDataError, checkpoint.CheckpointError, ValueError,
               minicnn.backend.BackendUnavailable, distributed.LaunchError)


def _note(message, category, filename, lineno, file=None, line=None):
    print(f"note: {message}", file=sys.stderr if file is None else file, flush=True)


@contextlib.contextmanager
def one_line_errors(parser):
    """Run the body of a command's ``main``: a known failure becomes ``parser.exit`` with one
    ``error:`` line (2; 130 for Ctrl-C), a data warning one ``note:`` line."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", data.CMRDataWarning)
        warnings.showwarning = _note
        try:
            yield
        except USER_ERRORS as err:
            parser.exit(2, f"error: {err}\n")
        except OSError as err:          # what is left: writing outputs
            where = f"{err.filename}: " if err.filename else ""
            parser.exit(2, f"error: cannot write {where}{err.strerror or err}\n")
        except KeyboardInterrupt as err:
            detail = f": {err}" if str(err) else ""
            parser.exit(130, f"error: interrupted (Ctrl-C){detail}\n")


@contextlib.contextmanager
def output_folder(path):
    """Create the folder ``path`` (and its parents) and check that a file can be written in
    it, before any work; yields it as a Path. If the body fails and the folder was created
    here and is still empty, it is removed, so that a failed command leaves nothing behind.
    An unusable folder raises ``ValueError`` naming it."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        _remove_empty(created)
        raise ValueError(f"cannot write to the output folder {path}: "
                         f"{err.strerror or err}") from None
    try:
        yield path
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders):
    """Remove the folders (innermost first) that are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
