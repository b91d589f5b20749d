"""cmr.train / evaluate / predict under faults and bad input (issue 27): one clear line, no
traceback, no lost model. Kills are injected (a checkpoint write that stops half-way), not
timed; the command lines run in-process (``main(argv)``) but for the table of bad inputs,
which runs each in a fresh interpreter to see exactly what a user sees."""
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmr import checkpoint, evaluate, predict, presets, train
from cmr.phantom import make_phantom
from cmr.unet import UNet

ROOT = Path(__file__).resolve().parents[2]
# a small run whose score improves every epoch (a best.npz write each): one batch an epoch
TINY = dict(train.DEFAULTS, base=2, depth=2, epochs=2, batch_size=4, phantom_train=4,
            phantom_val=4, lr=1e-2, seed=1, init="he", loss="ce+dice")
TINY_FLAGS = ["--base", "2", "--depth", "2", "--batch-size", "4", "--phantom-train", "4",
              "--phantom-val", "4", "--lr", "1e-2", "--seed", "1", "--init", "he",
              "--loss", "ce+dice", "--no-progress"]


def quiet(*_):
    pass


class Killed(BaseException):
    """What the process sees of a SIGKILL: nothing after this point runs (not even the
    cleanup of the temporary file, which the tests switch off)."""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch run folder (read-only for the tests: copy it to change it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train.run(dict(TINY, epochs=1), out, say=quiet, progress=False)
    return out


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """Three labelled phantom slices in cmr's image/ + mask/ layout."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("data")
    split = make_phantom(3, seed=5)
    for sub in ("image", "mask"):
        (folder / sub).mkdir()
    for name, im, m in zip(split.names, split.images, split.masks):
        Image.fromarray((im * 255).astype(np.uint8)).save(folder / "image" / f"{name}.png")
        Image.fromarray(m).save(folder / "mask" / f"{name}_mask.png")
    return folder


def one_error_line(text):
    """The single ``error:`` line of a command's stderr (and nothing but it, once a progress
    bar has cleared itself: what a terminal shows of a line is what follows its last \\r)."""
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


def refused(capsys, main, argv, status=2):
    """Run ``main(argv)`` in-process; it must exit with ``status`` and one error line."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == status
    return one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ item 3: kill mid-write
def test_a_kill_at_any_checkpoint_write_loses_nothing(tmp_path, monkeypatch):
    """Train 2 epochs straight; then, for every checkpoint write of that run in turn (best.npz
    and last.npz of each epoch: before and after a last.npz exists, with best.npz ahead of
    last.npz or not), train
    again with that write stopped half-way (the partial temporary file left, as a SIGKILL
    leaves it) and resume: best.npz and last.npz end bit for bit as the straight run's. At
    the kill, last.npz never records a best model that best.npz does not hold."""
    monkeypatch.setattr(train, "plot_curves", lambda *_: None)     # not compared: time saved
    real_write, real_save, real_discard = checkpoint._write, checkpoint.save, checkpoint._discard
    written = []
    monkeypatch.setattr(checkpoint, "save", lambda path, *a, **k: (
        written.append(Path(path).name), real_save(path, *a, **k))[-1])
    train.run(TINY, tmp_path / "straight", say=quiet, progress=False)
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert written == ["best.npz", "last.npz"] * 2, written
    expected = {name: checkpoint.load(tmp_path / "straight" / name) for name in
                ("best.npz", "last.npz")}

    for k, name in enumerate(written):
        out = tmp_path / f"kill{k}"
        calls = []

        def write_then_die(f, arrays):
            calls.append(1)
            if len(calls) < k + 1:
                return real_write(f, arrays)
            whole = io.BytesIO()
            np.savez(whole, **arrays)
            f.write(whole.getvalue()[:len(whole.getvalue()) // 2])
            raise Killed
        monkeypatch.setattr(checkpoint, "_write", write_then_die)
        monkeypatch.setattr(checkpoint, "_discard", lambda tmp: None)
        with pytest.raises(Killed):
            train.run(TINY, out, say=quiet, progress=False)
        assert [p.name.split("-")[0] for p in out.glob(".*.npz")] == [f".{name[:-4]}"]
        if (out / "last.npz").is_file():      # best.npz holds the best that last.npz records
            claimed = checkpoint.load(out / "last.npz")[0]["best"]
            assert checkpoint.load(out / "best.npz")[0]["best"] >= claimed, (k, name)
        monkeypatch.setattr(checkpoint, "_write", real_write)
        monkeypatch.setattr(checkpoint, "_discard", real_discard)
        said = []
        train.run(TINY, out, resume=True, say=said.append, progress=False)
        assert any(line.startswith("Removed 1 partial checkpoint file") for line in said)
        assert not list(out.glob(".*.npz"))
        for file, (meta, params, state) in expected.items():
            got_meta, got_params, got_state = checkpoint.load(out / file)
            assert (got_meta["epoch"], got_meta["best"]) == (meta["epoch"], meta["best"])
            for key in params:
                np.testing.assert_array_equal(got_params[key], params[key], err_msg=key)
            for a, b in zip(got_state, state):
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key])
        log = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
        assert log == [1, 2], (k, log)          # a killed epoch's line is not repeated


def test_checkpoint_is_synced_before_the_rename_and_readable_by_all(tmp_path, monkeypatch):
    """fsync comes before the rename (a power cut cannot leave a renamed empty file), and a
    checkpoint has the permissions of any other output (items 3 and 9)."""
    import os
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[-1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"),
                                                     real_replace(a, b))[-1])
    checkpoint.save(tmp_path / "c.npz", UNet(1, 4, 2, 1), {"epoch": 0})
    assert events[:2] == ["fsync", "rename"]
    umask = os.umask(0)
    os.umask(umask)
    (tmp_path / "other.txt").write_text("x")
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o666 & ~umask == \
        (tmp_path / "other.txt").stat().st_mode & 0o777


# ------------------------------------------------------------------ item 1: damaged files
def damaged_copies(source, folder):
    """A checkpoint cut short, empty, with one byte flipped, and a text file named .npz."""
    whole = Path(source).read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    files = {"truncated": whole[:len(whole) // 2], "empty": b"", "flipped": bytes(flipped),
             "text": b"this is not a checkpoint\n"}
    for name, content in files.items():
        (folder / f"{name}.npz").write_bytes(content)
    return {name: folder / f"{name}.npz" for name in files}


def test_a_damaged_checkpoint_is_one_clear_line(tmp_path, finished_run):
    said = {}
    for name, path in damaged_copies(finished_run / "best.npz", tmp_path).items():
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.load_model(path)
        said[name] = str(err.value)
        assert said[name].startswith(f"{path} is not a readable minicnn checkpoint (")
        assert "\n" not in said[name] and "pickle" not in said[name]
    assert "truncated, empty or not an .npz archive" in said["truncated"]
    assert "truncated, empty or not an .npz archive" in said["empty"]
    assert "damaged" in said["flipped"]
    assert "not an .npz archive" in said["text"]


# ------------------------------------------------------------------ item 2: unwritable output
def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_one(tmp_path, monkeypatch,
                                                                   capsys, finished_run):
    import errno
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = (out / "last.npz").read_bytes()

    def disk_full(f, arrays):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "_write", disk_full)
    line = refused(capsys, train.main, ["--resume", "--epochs", "2", "--out", out])
    assert line == (f"error: cannot write {out / 'best.npz'}: No space left on device; the "
                    "previous best.npz is unchanged") or line == (
        f"error: cannot write {out / 'last.npz'}: No space left on device; the previous "
        "last.npz is unchanged")
    assert (out / "last.npz").read_bytes() == before and not list(out.glob(".*.npz"))


def test_predict_checks_its_output_folder_before_predicting(tmp_path, monkeypatch, capsys,
                                                           finished_run, data_folder):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(predict, "predict_masks", lambda *a, **k: pytest.fail("predicted"))
    line = refused(capsys, predict.main, ["--checkpoint", finished_run, "--input", data_folder,
                                          "--out", tmp_path / "file" / "sub"])
    assert line.startswith(f"error: cannot write to the output folder {tmp_path / 'file'}")


def test_an_unwritable_run_folder_is_one_line_and_a_failed_run_leaves_no_folder(tmp_path,
                                                                                 capsys,
                                                                                 monkeypatch):
    (tmp_path / "file").write_text("x")
    line = refused(capsys, train.main, ["--out", tmp_path / "file" / "sub", *TINY_FLAGS])
    assert "cannot write to the output folder" in line and "Not a directory" in line
    # a folder without write permission (injected: the tests may run as root, who may write)
    import errno
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    with monkeypatch.context() as m:
        m.setattr(tempfile, "TemporaryFile", denied)
        line = refused(capsys, train.main, ["--out", tmp_path / "ro", *TINY_FLAGS])
    assert line == f"error: cannot write to the output folder {tmp_path / 'ro'}: Permission denied"
    # item 9: a run that fails before writing anything leaves no empty --out behind
    line = refused(capsys, train.main, ["--data", tmp_path / "nowhere", "--out",
                                        tmp_path / "new" / "run", *TINY_FLAGS])
    assert "data folder not found" in line and not (tmp_path / "new").exists()


# ------------------------------------------------------------------ items 4 and 5
def test_resume_refuses_flags_that_contradict_the_run(tmp_path, capsys, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    line = refused(capsys, train.main, ["--resume", "--base", "32", "--lr", "0.5", "--out", out])
    assert line == (f"error: --resume continues the run in {out} with its own settings; "
                    "--lr 0.5 (the run has 0.01), --base 32 (the run has 2): only --epochs may "
                    "change (a new run: another --out, or --force)")
    line = refused(capsys, train.main, ["--resume", "--preset", "quick", "--out", out])
    assert "--base 8 (the run has 2)" in line
    # the run's own values, and a new --epochs, are accepted
    assert train.main(["--resume", "--epochs", "2", *TINY_FLAGS, "--out", str(out)]) == 0
    assert checkpoint.load(out / "last.npz")[0]["epoch"] == 2
    line = refused(capsys, train.main, ["--resume", "--force", "--out", out])
    assert "choose one" in line
    line = refused(capsys, train.main, ["--resume", "--out", tmp_path / "empty"])
    assert line == f"error: nothing to resume in {tmp_path / 'empty'}: no last.npz or config.json"


def test_a_width_mismatch_names_the_two_widths(tmp_path, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    with pytest.raises(checkpoint.CheckpointError) as err:
        train.run(dict(TINY, base=4), out, resume=True, say=quiet, progress=False)
    assert str(err.value) == (f"{out / 'last.npz'} holds another U-Net: base 2 (checkpoint) "
                              "vs 4 (this run)")


# ------------------------------------------------------------------ item 7: strict JSON
def strict_json(text):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_undefined_values_are_null_and_the_table_says_how_means_treat_them(tmp_path, capsys,
                                                                           data_folder):
    from minicnn.random import manual_seed
    manual_seed(0)                       # an untrained net: structures missed or invented
    checkpoint.save(tmp_path / "m.npz", UNet(1, 4, 2, 1), {"epoch": 0})
    assert evaluate.main(["--checkpoint", str(tmp_path / "m.npz"), "--data", str(data_folder),
                          "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    result = strict_json((tmp_path / "e.json").read_text())
    assert None in result["hd95"].values() and result["hd95_undefined"]["RV"] > 0
    out = capsys.readouterr().out
    assert "n/a" in out and "HD95 is undefined on a slice where a structure is in only one of "\
        "prediction and ground truth" in out and "'mean' the classes with a value" in out
    assert "NaN" not in (tmp_path / "e.json").read_text()


def test_the_training_log_is_strict_json(finished_run):
    for line in (finished_run / "log.jsonl").read_text().splitlines():
        strict_json(line)
    with np.load(finished_run / "last.npz", allow_pickle=False) as z:
        strict_json(str(z["meta"]))


# ------------------------------------------------------------------ item 8: progress, Ctrl-C
@pytest.mark.parametrize("module", [evaluate, predict])
def test_ctrl_c_in_evaluate_and_predict_is_one_line_and_130(tmp_path, monkeypatch, capsys,
                                                            module, finished_run, data_folder):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(module, "predict_masks", interrupt)
    where = ["--data", data_folder] if module is evaluate else ["--input", data_folder,
                                                               "--out", tmp_path / "p"]
    line = refused(capsys, module.main, ["--checkpoint", finished_run, *where], status=130)
    assert line == "error: interrupted (Ctrl-C)"
    assert not (tmp_path / "p").exists()                  # nothing left half-made


def test_evaluate_and_predict_show_progress(capsys, finished_run, data_folder):
    model, _ = checkpoint.load_model(finished_run / "best.npz")
    split = make_phantom(5, seed=1)
    predict.predict_masks([model, model], split.images, batch_size=2, flip_tta=True,
                          progress=True)
    bar = capsys.readouterr().err
    assert "predicting" in bar and "/20 [" in bar          # 2 models x 2 flips x 5 images


def test_ctrl_c_in_training_labels_and_later_removes_interrupted_npz(tmp_path, monkeypatch,
                                                                     capsys, finished_run):
    """Ctrl-C in the middle of epoch 2: one line; interrupted.npz says so (epoch 1 completed,
    interrupted in epoch 2); a resume that gets past it removes it."""
    monkeypatch.setattr(train, "plot_curves", lambda *_: None)
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    from cmr import evaluate as evaluate_module      # the validation of every epoch
    real = evaluate_module.evaluate

    def interrupt(*a, **k):           # Ctrl-C once epoch 2's images were trained on
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate_module, "evaluate", interrupt)
    line = refused(capsys, train.main, ["--resume", "--epochs", "2", "--out", out], status=130)
    assert line == (f"error: interrupted (Ctrl-C): {out / 'interrupted.npz'} holds the weights "
                    f"in epoch 2, after 4 of its 4 images; --resume continues exactly from "
                    f"{out / 'last.npz'} (end of epoch 1)")
    meta = checkpoint.load(out / "interrupted.npz")[0]
    assert (meta["epoch"], meta["interrupted_in_epoch"], meta["images_seen"]) == (1, 2, 4)
    monkeypatch.setattr(evaluate_module, "evaluate", real)
    said = []
    train.run(dict(TINY, epochs=2), out, resume=True, say=said.append, progress=True)
    assert not (out / "interrupted.npz").exists()
    assert "Removed interrupted.npz: last.npz is past it" in said
    bar = capsys.readouterr().err
    assert "img/s" in bar and "img_s" not in bar          # one rate in the training bar


def test_ctrl_c_stops_every_worker_of_an_ensemble_and_resume_finishes_it(tmp_path):
    """A real Ctrl-C (SIGINT to the terminal's process group) while ``--jobs 2`` trains two
    members in worker processes: within seconds, exit status 130, one line, no traceback,
    no live process of the session left (a zombie, exited but not yet reaped, is allowed),
    each member's interrupted.npz written; ``--resume`` then
    finishes both and scores the ensemble."""
    import os
    import signal
    import time
    out = tmp_path / "ens"
    args = [sys.executable, "-m", "cmr.train", "--members", "2", "--jobs", "2", "--base", "4",
            "--depth", "2", "--epochs", "12", "--phantom-train", "16", "--phantom-val", "4",
            "--batch-size", "4", "--no-progress", "--out", str(out)]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)      # its own group, as a shell's
    logs = [out / f"member{k}" / "log.jsonl" for k in range(2)]
    deadline = time.monotonic() + 300
    while not all(log.exists() and log.stat().st_size for log in logs):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.2)                                          # both past their epoch 1
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("cmr.train --jobs 2 did not stop within 60 s of Ctrl-C") from None
    assert p.returncode == 130, err
    assert err.strip().splitlines() == ["error: interrupted (Ctrl-C)"], err
    ps = subprocess.run(["ps", "-o", "stat=", "-s", str(p.pid)], capture_output=True, text=True)
    assert [st for st in ps.stdout.split() if not st.startswith("Z")] == [], ps.stdout
    assert all((out / f"member{k}" / "interrupted.npz").exists() for k in range(2))
    r = subprocess.run(args[:3] + ["--resume", "--jobs", "2", "--no-progress", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "ensemble.json").exists() and (out / "ensemble_val.json").exists()
    assert not any((out / f"member{k}" / "interrupted.npz").exists() for k in range(2))


def test_each_epoch_line_gives_the_runs_eta(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "plot_curves", lambda *_: None)
    said = []
    train.run(dict(TINY, epochs=2), tmp_path, say=said.append, progress=False)
    epochs = [line for line in said if line.startswith("epoch ")]
    assert "run ETA" in epochs[0] and "run ETA" not in epochs[1]


# ------------------------------------------------------------------ item 11: --help
def test_help_shows_each_presets_settings_and_time():
    text = " ".join(train.build_parser().format_help().split())
    for name, settings in presets.PRESETS.items():
        assert f" {name}: " in text and presets.PRESET_TIMES[name] in text, name
        for key, value in settings.items():
            assert f"--{key.replace('_', '-')}" in text
    assert ("quick: --epochs 8 --base 8 --batch-size 8 --lr 0.003 --loss ce+dice --init he "
            "--phantom-train 160 --phantom-val 20; time: a few minutes on a 2-core CPU") in text


# ------------------------------------------------------------------ the table: no traceback
def bad_inputs(tmp, run, data):
    """(name, argv) of command lines on bad input; each must end in one error line."""
    bad = damaged_copies(run / "best.npz", tmp)
    (tmp / "file").write_text("x")
    resumable = tmp / "resumable"
    shutil.copytree(run, resumable)
    (resumable / "last.npz").write_bytes(bad["truncated"].read_bytes())
    existing = tmp / "existing"
    shutil.copytree(run, existing)
    evaluate_ = ["cmr.evaluate", "--data", data, "--checkpoint"]
    return {
        "evaluate truncated": [*evaluate_, bad["truncated"]],
        "evaluate empty": [*evaluate_, bad["empty"]],
        "evaluate flipped byte": [*evaluate_, bad["flipped"]],
        "evaluate text file": [*evaluate_, bad["text"]],
        "evaluate json into a file's folder": [*evaluate_, run, "--json", tmp / "file" / "e"],
        "predict truncated": ["cmr.predict", "--checkpoint", bad["truncated"], "--input", data,
                              "--out", tmp / "p"],
        "predict out under a file": ["cmr.predict", "--checkpoint", run, "--input", data,
                                     "--out", tmp / "file" / "sub"],
        "train resume truncated": ["cmr.train", "--resume", "--out", resumable],
        "train out under a file": ["cmr.train", "--out", tmp / "file" / "sub"],
        "train into a run": ["cmr.train", *TINY_FLAGS, "--out", existing],
        "train resume contradicted": ["cmr.train", "--resume", "--base", "32", "--out", existing],
    }


BAD = [
    "evaluate truncated", "evaluate empty", "evaluate flipped byte", "evaluate text file",
    "evaluate json into a file's folder", "predict truncated", "predict out under a file",
    "train resume truncated", "train out under a file", "train into a run",
    "train resume contradicted"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gives_one_error_line_and_no_traceback(tmp_path, finished_run, data_folder,
                                                         case):
    table = bad_inputs(tmp_path, finished_run, data_folder)
    assert list(table) == BAD
    argv = table[case]
    r = subprocess.run([sys.executable, "-m", *map(str, argv)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr, r.stderr
    one_error_line(r.stderr)


# ------------------------------------------------------------------ item 9: said once
def test_colour_inputs_are_one_note_line(tmp_path, capsys, finished_run, data_folder):
    from PIL import Image
    (tmp_path / "in").mkdir()
    for path in sorted((data_folder / "image").glob("*.png")):
        Image.open(path).convert("RGB").save(tmp_path / "in" / path.name)
    assert predict.main(["--checkpoint", str(finished_run), "--input", str(tmp_path / "in"),
                         "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert notes == [f"note: 3 of 3 images (the first: {sorted((tmp_path / 'in').iterdir())[0]})"
                     " are RGB rather than grayscale: converted to grayscale (luminance)"]
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 3
