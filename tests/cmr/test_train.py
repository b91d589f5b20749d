"""cmr.train / evaluate / predict end to end, on small phantom runs and on real data."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from cmr import checkpoint, train
from cmr.predict import keep_largest_component

TINY = dict(train.DEFAULTS, base=2, depth=2, epochs=2, batch_size=4, phantom_train=8,
            phantom_val=4, lr=1e-2)
ROOT = Path(__file__).resolve().parents[2]
# configurations and losses of recorded runs, copied from their folders under
# benchmarks/results/ so that pruning results never breaks a test
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "recorded_runs.json").read_text())


def quiet(*_):
    pass


def test_phantom_run_writes_everything(tmp_path):
    history = train.run(TINY, tmp_path, say=quiet, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for name in ("last.npz", "best.npz", "log.jsonl", "curves.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and set(json.loads(lines[0])["val_dice"]) == {"RV", "Myo", "LV", "mean"}


@pytest.mark.parametrize("norm", ["none", "instance"])
def test_checkpoint_is_data_not_code(tmp_path, norm):
    train.run(dict(TINY, epochs=1, norm=norm), tmp_path, say=quiet, progress=False)
    with np.load(tmp_path / "last.npz", allow_pickle=False) as z:     # raises if pickled
        assert all(z[k].dtype != object for k in z.files)
        meta = json.loads(str(z["meta"]))
    assert meta["epoch"] == 1 and meta["model"]["base"] == 2 and meta["model"]["norm"] == norm
    model, _ = checkpoint.load_model(tmp_path / "last.npz")
    _, params, _ = checkpoint.load(tmp_path / "last.npz")
    assert set(params) == {name for name, _ in model.named_parameters()}
    assert ("down0.norm1.weight" in params) == (norm == "instance")


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    cfg = dict(TINY, epochs=3)
    train.run(cfg, tmp_path / "straight", say=quiet, progress=False)
    train.run(dict(cfg, epochs=1), tmp_path / "resumed", say=quiet, progress=False)
    train.run(cfg, tmp_path / "resumed", resume=True, say=quiet, progress=False)
    _, a, oa = checkpoint.load(tmp_path / "straight" / "last.npz")
    _, b, ob = checkpoint.load(tmp_path / "resumed" / "last.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for sa, sb in zip(oa, ob):
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])


def test_training_lowers_the_loss_on_the_phantom(tmp_path):
    history = train.run(dict(TINY, base=4, epochs=4, phantom_train=16, lr=5e-3, init="he"),
                        tmp_path, say=quiet, progress=False)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]


def test_deep_supervision_trains_saves_and_loads_as_a_plain_predictor(tmp_path):
    train.run(dict(TINY, epochs=1, depth=3, deep_supervision=True), tmp_path, say=quiet,
              progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["deep_supervision"] is True
    args = train.build_parser().parse_args(["--deep-supervision"])
    assert train.config_from_args(args)["deep_supervision"] is True
    model, meta = checkpoint.load_model(tmp_path / "last.npz")
    assert meta["model"]["deep_supervision"] is True
    assert {n for n, _ in model.named_parameters() if n.startswith("aux")} == {
        "aux1.weight", "aux1.bias", "aux2.weight", "aux2.bias"}
    x = minicnn.Tensor(np.random.default_rng(0).random((1, 1, 16, 16)).astype(np.float32))
    np.testing.assert_array_equal(model(x).numpy(), model(x, aux=True)[0].numpy())
    # a checkpoint written before the setting existed is a model without the heads
    assert train._model_mismatch({k: v for k, v in meta["model"].items()
                                  if k != "deep_supervision"},
                                 dict(meta["model"], deep_supervision=False)) == ""
    assert "deep_supervision False (checkpoint) vs True" in train._model_mismatch(
        dict(meta["model"], deep_supervision=False), meta["model"])


def test_level_masks_take_each_blocks_centre_pixel():
    masks = np.arange(2 * 8 * 8).reshape(2, 8, 8)
    np.testing.assert_array_equal(train.level_masks(masks, 1), masks[:, 1::2, 1::2])
    np.testing.assert_array_equal(train.level_masks(masks, 2)[0], [[18, 22], [50, 54]])


def assert_recorded(config, recorded, ignore, label):
    """``config`` is the configuration a run recorded (its JSON, lists for tuples), but for
    the keys in ``ignore`` (its machine's paths, its backend, ...); a key added since the run
    has its default."""
    recorded = dict(train.DEFAULTS, **recorded)
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
    assert {k: v for k, v in config.items() if k not in ignore} == \
        {k: v for k, v in recorded.items() if k not in ignore}, label


def test_augment_flag_and_presets_reach_the_config(tmp_path):
    parser = train.build_parser()
    for argv, want in (([], "default"), (["--augment", "strong"], "strong"),
                       (["--no-augment"], "none"), (["--preset", "cpu16"], "default")):
        assert train.config_from_args(parser.parse_args(argv))["augment"] == want, argv
    best = train.config_from_args(parser.parse_args(["--preset", "cpu16-acdc"]))
    assert best == dict(train.DEFAULTS, base=16, init="he", loss="ce+dice", schedule="cosine",
                        lr=1e-3, batch_size=10, epochs=50, norm="instance",
                        extra_transpose=True)          # the recipe of the README's best run
    vol = train.config_from_args(parser.parse_args(["--preset", "cpu16-acdc",
                                                    "--no-extra-transpose"]))
    assert vol == dict(best, extra_transpose=False)   # acdc96vol: the coursework orientation
    # cpu16-acdc-ds is the configuration the shipped model was trained with (its seed: 0)
    shipped = checkpoint.load(checkpoint.SHIPPED)[0]
    ds = train.config_from_args(parser.parse_args(["--preset", shipped["card"]["name"],
                                                   "--split-seed", "0"]))
    assert ds == dict(best, deep_supervision=True, split_seed=0)
    assert_recorded(ds, shipped["train"], ("data", "extra_data"), "the shipped model")
    # each preset is the configuration that its recorded run wrote (gpu64-strong: the GPU run
    # A7; cpu16-acdc-strong: the CPU run on the corrected acdc96 split)
    strong = train.config_from_args(parser.parse_args(["--preset", "gpu64-strong"]))
    assert_recorded(strong, RECORDED["configs"]["gpu_train_normlong/A7"], ("data", "backend"),
                    "gpu64-strong")
    for folder, flags in (("v2_inst_acdc_strong_e100", []),
                          ("v2_s1_inst_acdc_strong_e100", ["--seed", "1", "--split-seed", "0"]),
                          ("v2_xval_inst_acdc_strong_e100",
                           ["--extra-val", "--extra-data", "acdc96"])):
        long = train.config_from_args(parser.parse_args(["--preset", "cpu16-acdc-strong"]
                                                        + flags))
        assert_recorded(long, RECORDED["configs"][f"cmr_runs/{folder}"], ("data", "extra_data"),
                        folder)
    history = train.run(dict(TINY, epochs=1, augment="strong"), tmp_path, say=quiet,
                        progress=False)
    assert np.isfinite(history[0]["loss"])
    assert json.loads((tmp_path / "config.json").read_text())["augment"] == "strong"


@pytest.mark.parametrize("loss", ["dice", "ce+dice", "focal"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adagrad"])
def test_every_loss_and_optimizer_runs(tmp_path, loss, optimizer):
    history = train.run(dict(TINY, epochs=1, loss=loss, optimizer=optimizer,
                             schedule="cosine"), tmp_path, say=quiet, progress=False)
    assert np.isfinite(history[0]["loss"])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")   # lr 1e30: wanted
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train.run(dict(TINY, epochs=1), tmp_path, say=quiet, progress=False)
    before = (tmp_path / "last.npz").read_bytes()
    with pytest.raises(train.NonFiniteLoss, match="loss became"):
        train.run(dict(TINY, epochs=2, lr=1e30), tmp_path, resume=True, say=quiet,
                  progress=False)
    assert (tmp_path / "last.npz").read_bytes() == before


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def test_cli_errors_are_one_clear_line(tmp_path):
    r = run_cli("cmr.train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "error: data folder not found" in r.stderr.replace("\n", " ") \
        or "not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("cmr.train", "--epochs", "0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--epochs must be >= 1" in r.stderr
    r = run_cli("cmr.evaluate", "--checkpoint", str(tmp_path / "missing.npz"), "--data", ".")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr
    for module, where in (("cmr.evaluate", "--data"), ("cmr.predict", "--input")):
        for bad in ("1.5", "-0.1", "high"):
            r = run_cli(module, "--checkpoint", "c.npz", where, ".", "--out", "o",
                        "--min-confidence", bad)
            assert r.returncode == 2 and "between 0 and 1" in r.stderr, (module, bad, r.stderr)
            assert "Traceback" not in r.stderr


def _cuda_usable():
    from minicnn import backend
    try:
        backend.get("cuda")
    except Exception:
        return False
    return True


def test_cuda_backend_without_gpu_is_a_clear_message(tmp_path):
    if _cuda_usable():
        pytest.skip("a CUDA GPU is usable here")
    r = run_cli("cmr.train", "--backend", "cuda", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_tf32_precision_trains_end_to_end_and_is_put_back(tmp_path):
    """--precision tf32 on the NumPy backend (the emulation of tensor-core rounding) trains,
    is recorded in config.json, changes the numbers by TF32's rounding only, and leaves the
    backend in fp32 after the run. With --backend cuda it is taken (the tensor-core kernels,
    checked in the emulator by test_cuda_without_gpu.py): without a GPU the run stops at the
    backend's own one-line error, as an fp32 run does."""
    from minicnn.backend import numpy_backend as nb
    fp32 = train.run(TINY, tmp_path / "fp32", say=quiet, progress=False)
    said = []
    tf32 = train.run(dict(TINY, precision="tf32"), tmp_path / "tf32", say=said.append,
                     progress=False)
    assert nb.set_precision("fp32") == "fp32"                  # put back after the run
    assert any("TF32 convolutions (emulated)" in line for line in said)
    assert json.loads((tmp_path / "tf32" / "config.json").read_text())["precision"] == "tf32"
    a, b = fp32[0]["loss"], tf32[0]["loss"]
    assert a != b and abs(a - b) < 1e-3 * a
    if _cuda_usable():
        return
    runs = [run_cli("cmr.train", "--precision", p, "--backend", "cuda",
                    "--out", str(tmp_path / "cuda")) for p in ("fp32", "tf32")]
    assert runs[0].returncode == runs[1].returncode == 2
    assert runs[1].stderr == runs[0].stderr and "CuPy" in runs[1].stderr
    assert "Traceback" not in runs[1].stderr and "tf32" not in runs[1].stderr


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="no C++ compiler (g++ or $CXX) to build the kernel emulator")
def test_tf32_on_cuda_trains_end_to_end_in_the_emulator(monkeypatch, tmp_path,
                                                        tmp_path_factory):
    """``cmr.train --backend cuda --precision tf32`` as a whole (one epoch of a tiny U-Net on
    phantoms), every CUDA kernel, the tensor-core convolutions included, run by the CPU
    emulator: its loss is the NumPy backend's TF32 emulation's (to fp32 rounding), and it
    says which convolutions it ran."""
    import emulator as emu
    from minicnn.backend import numpy_backend as nb
    cfg = dict(TINY, epochs=1, phantom_train=4, phantom_val=4, precision="tf32")
    emulated = train.run(cfg, tmp_path / "numpy", say=quiet, progress=False)
    emu.use_the_emulated_gpu(monkeypatch, str(tmp_path_factory.getbasetemp()))
    said = []
    cuda = train.run(dict(cfg, backend="cuda"), tmp_path / "cuda", say=said.append,
                     progress=False)
    assert any("backend cuda; TF32 convolutions (tensor cores)" in line for line in said)
    assert cuda[0]["loss"] == pytest.approx(emulated[0]["loss"], rel=1e-5)
    assert nb.set_precision("fp32") == "fp32"


def test_precision_selects_the_cuda_configuration(monkeypatch):
    """On the CUDA backend the run's precision is CudaConfig's while it trains, and the
    configuration before is put back after (without touching the NumPy backend's)."""
    from minicnn.backend import numpy_backend as nb
    from minicnn.backend.cuda import config
    monkeypatch.setattr(config, "_current", config.CudaConfig(features=()))
    with train.precision(dict(TINY, backend="cuda", precision="tf32")):
        assert config.current() == config.CudaConfig(features=(), precision="tf32")
        assert nb.set_precision("fp32") == "fp32"              # the NumPy backend's unchanged
    assert config.current() == config.CudaConfig(features=())


def write_split_folder(directory, split, names=None):
    """A split's slices as PNGs in ``directory/image`` and ``directory/mask`` (cmr's layout)."""
    from PIL import Image
    for sub in ("image", "mask"):
        (directory / sub).mkdir(parents=True)
    for name, im, m in zip(names or split.names, split.images, split.masks):
        Image.fromarray((im * 255).astype(np.uint8)).save(directory / "image" / f"{name}.png")
        Image.fromarray(m).save(directory / "mask" / f"{name}_mask.png")


def test_figure_title_names_the_models_the_split_and_the_rules():
    from cmr import evaluate
    parser = argparse.ArgumentParser()
    evaluate.add_model_arguments(parser)
    parser.add_argument("--data")
    parser.add_argument("--split", default="default")

    def title(*argv):
        return evaluate.figure_title(parser.parse_args(list(argv)), {"dice": {"mean": 0.8524}})
    assert title("--checkpoint", "runs/a/best.npz", "--data", "D") == \
        "a/best.npz on D (default split): mean Dice 0.852"
    assert title("--checkpoint", "runs/a/best.npz", "runs/b", "--data", "D", "--split", "test",
                 "--min-confidence", "0.75", "--flip-tta") == \
        "a/best.npz + runs/b on D (test split, --flip-tta, --min-confidence 0.75): mean Dice 0.852"


def test_evaluate_and_predict_cli(tmp_path):
    from PIL import Image
    from cmr.phantom import make_phantom
    train.run(dict(TINY, epochs=1), tmp_path / "run", say=quiet, progress=False)
    split = make_phantom(3, seed=5)
    write_split_folder(tmp_path / "data", split)
    ckpt = str(tmp_path / "run" / "best.npz")
    r = run_cli("cmr.evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "data"),
                "--json", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv"),
                "--figure", str(tmp_path / "e.png"), "--figure-rows", "2")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result["dice"]) == {"RV", "Myo", "LV", "mean"} and len(result["per_image"]) == 3
    import csv
    with open(tmp_path / "e.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3                  # the per-image values of the JSON, None as empty
    for row, want in zip(rows, result["per_image"]):
        assert row["name"] == want["name"]
        for c in ("RV", "Myo", "LV"):
            for key in ("dice", "hd95"):
                v = want[key][c]
                assert row[f"{key}_{c}"] == ("" if v is None else repr(v)), (row, want)
    assert "nan" not in (tmp_path / "e.csv").read_text().lower()
    assert any(row[k] == "" for row in rows for k in row), "no undefined value to check"
    figure = np.array(Image.open(tmp_path / "e.png"))
    assert figure.ndim == 3 and figure.shape[0] > 100 and figure.std() > 0
    for flag in ("--figure", "--json", "--csv"):
        r = run_cli("cmr.evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "data"),
                    flag, str(tmp_path / "missing" / "out"))
        assert r.returncode == 2 and "error: cannot write" in r.stderr, (flag, r.stderr)
        assert "Traceback" not in r.stderr
    r = run_cli("cmr.predict", "--checkpoint", ckpt, "--input", str(tmp_path / "data"),
                "--out", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    masks = sorted((tmp_path / "pred").glob("*_mask.png"))
    assert len(masks) == 3 and len(list((tmp_path / "pred" / "overlay").glob("*.png"))) == 3
    values = np.array(Image.open(masks[0]))
    assert values.shape == (96, 96) and values.max() <= 3
    # --keep-largest: the same masks, post-processed (each class one region at most)
    r = run_cli("cmr.predict", "--checkpoint", ckpt, "--input", str(tmp_path / "data"),
                "--out", str(tmp_path / "pred1"), "--keep-largest")
    assert r.returncode == 0, r.stderr
    for path in masks:
        raw = np.array(Image.open(path))
        kept = np.array(Image.open(tmp_path / "pred1" / path.name))
        np.testing.assert_array_equal(kept, keep_largest_component(raw[None])[0])
    r = run_cli("cmr.evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "data"),
                "--keep-largest", "--json", str(tmp_path / "k.json"))
    assert r.returncode == 0, r.stderr
    from cmr import evaluate, metrics
    from cmr.predict import predict_masks
    model, _ = checkpoint.load_model(ckpt, "cpu")
    split = evaluate.load_split(tmp_path / "data")
    expected = metrics.evaluate_masks(keep_largest_component(predict_masks(model, split.images)),
                                      split.masks, split.names)
    assert json.loads((tmp_path / "k.json").read_text())["dice"] == pytest.approx(
        expected["dice"])


def test_an_ensemble_averages_its_models_probabilities(tmp_path):
    from PIL import Image
    from minicnn.random import manual_seed
    from cmr import evaluate, metrics
    from cmr.phantom import make_phantom
    from cmr.predict import predict_logits, predict_masks, predict_probs
    from cmr.unet import UNet
    ckpts = []
    for seed in (0, 1):            # untrained He-initialised nets: their label maps vary by pixel
        manual_seed(seed)
        checkpoint.save(tmp_path / f"m{seed}.npz", UNet(1, 4, 4, 2, "he"), {"epoch": 0})
        ckpts.append(str(tmp_path / f"m{seed}.npz"))
    models = [checkpoint.load_model(c, "cpu")[0] for c in ckpts]
    split = make_phantom(3, seed=5)
    one, two = (predict_logits(m, split.images) for m in models)
    assert np.abs(one - two).max() > 1e-3                   # two different models
    np.testing.assert_allclose(predict_probs(models, split.images), (one + two) / 2, rtol=1e-6)
    np.testing.assert_allclose(predict_probs(models[0], split.images), one, rtol=1e-6)
    flipped = [predict_logits(m, split.images[:, :, ::-1])[..., ::-1] for m in models]
    np.testing.assert_allclose(predict_probs(models, split.images, flip_tta=True),
                               (one + two + flipped[0] + flipped[1]) / 4, rtol=1e-6)
    expected = ((one + two) / 2).argmax(axis=1)
    np.testing.assert_array_equal(predict_masks(models, split.images), expected)
    for single in (one, two):
        assert (single.argmax(axis=1) != expected).any()    # so the checks below can tell
    with pytest.raises(ValueError):
        predict_probs([], split.images)
    # the command lines: --checkpoint A B scores and writes the ensemble's label maps
    write_split_folder(tmp_path / "data", split)
    r = run_cli("cmr.evaluate", "--checkpoint", *ckpts, "--data", str(tmp_path / "data"),
                "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr
    loaded = evaluate.load_split(tmp_path / "data")
    score = metrics.evaluate_masks(predict_masks(models, loaded.images), loaded.masks,
                                   loaded.names)
    assert json.loads((tmp_path / "e.json").read_text())["dice"] == pytest.approx(score["dice"])
    for model in models:                                    # which no single model scores
        alone = metrics.evaluate_masks(predict_masks(model, loaded.images), loaded.masks,
                                       loaded.names)
        assert alone["dice"] != pytest.approx(score["dice"])
    r = run_cli("cmr.predict", "--checkpoint", *ckpts, "--input", str(tmp_path / "data"),
                "--out", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    written = np.stack([np.array(Image.open(tmp_path / "pred" / f"{n}_mask.png"))
                        for n in loaded.names])
    np.testing.assert_array_equal(written, predict_masks(models, loaded.images))
    # --min-confidence: the ensemble's unsure structures erased, by evaluate and predict alike
    from cmr.predict import drop_unsure_structures
    probs = predict_probs(models, loaded.images)
    confidence = [probs[i, c][written[i] == c].mean() for i in range(len(written))
                  for c in (1, 2, 3) if (written[i] == c).any()]
    threshold = f"{np.median(confidence):.6f}"              # some structures go, some stay
    unsure = drop_unsure_structures(written, probs, float(threshold))
    assert (unsure != written).any() and (unsure > 0).any()
    r = run_cli("cmr.predict", "--checkpoint", *ckpts, "--input", str(tmp_path / "data"),
                "--out", str(tmp_path / "pred_c"), "--min-confidence", threshold)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(
        np.stack([np.array(Image.open(tmp_path / "pred_c" / f"{n}_mask.png"))
                  for n in loaded.names]), unsure)
    r = run_cli("cmr.evaluate", "--checkpoint", *ckpts, "--data", str(tmp_path / "data"),
                "--min-confidence", threshold, "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c.json").read_text())["dice"] == pytest.approx(
        metrics.evaluate_masks(unsure, loaded.masks, loaded.names)["dice"])


def test_keep_largest_component():
    m = np.zeros((2, 8, 8), np.uint8)
    m[0, 0:3, 0:3] = 1                 # RV: a 9-pixel region ...
    m[0, 6, 6] = 1                     # ... and a 1-pixel island: removed
    m[0, 5, 0:2] = 3                   # LV: 2 pixels and 3 pixels; the 3 stay
    m[0, 7, 3:6] = 3
    m[0, 3, 3] = 2                     # Myo: one region, unchanged
    m[1, 2, 2] = 2                     # one region per class: unchanged
    expected = m.copy()
    expected[0, 6, 6] = 0
    expected[0, 5, 0:2] = 0
    out = keep_largest_component(m)
    np.testing.assert_array_equal(out, expected)
    assert m[0, 6, 6] == 1                                  # the input is not modified
    diagonal = np.zeros((1, 4, 4), np.uint8)
    diagonal[0, 0, 0] = diagonal[0, 1, 1] = 1              # 4-connectivity: two regions, a tie
    assert keep_largest_component(diagonal).sum() == 1      # the first one is kept


def test_drop_unsure_structures():
    from cmr.predict import drop_unsure_structures, structure_confidence
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, :2, :2] = 1                    # 4 px of RV
    masks[1, :6, :6] = 1                    # 36 px of RV ...
    masks[1, 8:, 8:] = 2                    # ... and 4 px of Myo
    masks[2, 5:, 5:] = 3                    # 25 px of LV
    probs = np.full((3, 4, 10, 10), 0.9)    # confident everywhere but two structures:
    probs[1, 1] = np.where(np.arange(10)[:, None] < 3, 0.5, 0.9)    # RV of image 1: mean 0.7
    probs[2, 3, 5:, 5:] = 0.55                                      # LV of image 2: 0.55
    np.testing.assert_allclose(structure_confidence(masks, probs, 1), [0.9, 0.7, 0.0])
    np.testing.assert_allclose(structure_confidence(masks, probs, 3), [0.0, 0.0, 0.55])

    def kept(threshold):                    # labelled pixels left in each image
        return [int((m > 0).sum()) for m in drop_unsure_structures(masks, probs, threshold)]
    assert kept(0.6) == [4, 40, 0]
    assert kept(0.75) == [4, 4, 0]          # the RV of image 1 goes, its Myo stays
    assert kept(0.0) == [4, 40, 25]
    assert masks[2, 9, 9] == 3                                  # the input is not modified


REAL = os.environ.get("CMR_DATA")


@pytest.mark.skipif(not REAL, reason="CMR_DATA not set: real-data test skipped")
def test_short_training_on_real_data_lowers_the_loss(tmp_path):
    cfg = dict(train.DEFAULTS, data=str(Path(REAL) / "cmr"), base=4, epochs=3, batch_size=10,
               lr=3e-3, augment=False)
    history = train.run(cfg, tmp_path, say=quiet, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]


def write_patient_folder(directory, n):
    """``n`` phantom slices as a flat folder (image/, mask/), two slices per patient."""
    from cmr.phantom import make_phantom
    split = make_phantom(n, seed=2)
    names = [f"patient{i // 2:03d}_frame01_slice{i % 2:02d}" for i in range(n)]
    write_split_folder(directory, split, names)


def test_evaluate_can_score_the_held_out_part_of_a_split(tmp_path):
    from cmr import data, evaluate
    write_patient_folder(tmp_path, 10)
    whole = evaluate.load_split(tmp_path)
    test = evaluate.load_split(tmp_path, "test", seed=3)
    expected = data.split_by_patient(data.load_folder(tmp_path), seed=3,
                                     **data.coursework_rules())[2]
    assert len(whole) == 10 and test.names == expected.names
    train_part = evaluate.load_split(tmp_path, "train", seed=3)
    assert not set(train_part.patients) & set(test.patients)


def test_split_seed_fixes_the_patients_whatever_the_seed(tmp_path):
    write_patient_folder(tmp_path, 20)

    def patients(**cfg):
        train_part, val = train.load_data(dict(train.DEFAULTS, data=str(tmp_path), **cfg), quiet)
        return sorted(set(train_part.patients)), sorted(set(val.patients))
    assert patients(seed=0) != patients(seed=1)                 # --seed alone moves the split
    assert patients(seed=1, split_seed=0) == patients(seed=0)   # --split-seed holds it
    assert patients(seed=0, split_seed=1) == patients(seed=1)
    args = train.build_parser().parse_args(["--seed", "1", "--split-seed", "0"])
    assert train.config_from_args(args)["split_seed"] == 0


def test_extra_val_adds_the_extra_folders_validation_patients(tmp_path):
    """--extra-data adds its training split to the training set; --extra-val adds its
    validation split (transposed with --extra-transpose) to the set that picks best.npz."""
    from cmr import data
    write_patient_folder(tmp_path / "a", 20)
    write_patient_folder(tmp_path / "b", 20)
    b_train, b_val = data.load_dataset(tmp_path / "b", seed=0)
    cfg = dict(train.DEFAULTS, data=str(tmp_path / "a"), extra_data=str(tmp_path / "b"))
    a_train, a_val = train.load_data(dict(cfg, extra_data=None), quiet)
    both_train, val = train.load_data(cfg, quiet)
    assert len(both_train) == len(a_train) + len(b_train) and val.names == a_val.names
    _, val = train.load_data(dict(cfg, extra_val=True, extra_transpose=True), quiet)
    assert val.names == a_val.names + b_val.names
    np.testing.assert_array_equal(val.images[len(a_val):], b_val.images.transpose(0, 2, 1))
    np.testing.assert_array_equal(val.masks[len(a_val):], b_val.masks.transpose(0, 2, 1))
    parser = train.build_parser()
    args = parser.parse_args(["--extra-val", "--extra-data", "b"])
    assert train.config_from_args(args)["extra_val"] is True
    with pytest.raises(ValueError, match="--extra-val needs --extra-data"):
        train.config_from_args(parser.parse_args(["--extra-val"]))
    r = run_cli("cmr.train", "--extra-val", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "error: --extra-val needs --extra-data" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_extra_val_run_repeats_the_training_of_its_seed():
    """--extra-val changes which epoch is kept, not the training: the recorded seed-0 runs of
    --preset cpu16-acdc-strong with and without it agree in the loss of every epoch."""
    losses = [RECORDED["losses"][f"cmr_runs/{folder}"]
              for folder in ("v2_inst_acdc_strong_e100", "v2_xval_inst_acdc_strong_e100")]
    assert losses[0] == losses[1] and len(losses[0]) == 100


def test_members_train_an_ensemble_that_evaluate_and_predict_load_by_folder(tmp_path):
    from cmr import evaluate, metrics
    from cmr.predict import predict_masks
    cfg = dict(TINY, epochs=1, members=2, seed=3)
    result = train.run_ensemble(cfg, tmp_path / "ens", say=quiet, progress=False)
    # member k is exactly the run of --seed 3+k --split-seed 3
    train.run(dict(TINY, epochs=1, seed=4, split_seed=3), tmp_path / "alone", say=quiet,
              progress=False)
    _, a, _ = checkpoint.load(tmp_path / "ens" / "member1" / "last.npz")
    _, b, _ = checkpoint.load(tmp_path / "alone" / "last.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    seeds = [json.loads((tmp_path / "ens" / f"member{k}" / "config.json").read_text())["seed"]
             for k in (0, 1)]
    assert seeds == [3, 4]
    files = checkpoint.resolve([tmp_path / "ens"])
    assert files == [tmp_path / "ens" / "member0" / "best.npz",
                     tmp_path / "ens" / "member1" / "best.npz"]
    assert checkpoint.resolve([tmp_path / "alone"]) == [tmp_path / "alone" / "best.npz"]
    # the validation score written is the two best.npz averaged, on the members' split
    models = [checkpoint.load_model(f)[0] for f in files]
    _, val = train.load_data(dict(cfg, seed=3), quiet)
    expected = metrics.evaluate_masks(predict_masks(models, val.images), val.masks, val.names)
    assert result["dice"] == pytest.approx(expected["dice"])
    assert json.loads((tmp_path / "ens" / "ensemble_val.json").read_text())["dice"] == \
        pytest.approx(expected["dice"])
    # cmr.evaluate --checkpoint FOLDER scores the ensemble
    write_split_folder(tmp_path / "data", val)
    r = run_cli("cmr.evaluate", "--checkpoint", str(tmp_path / "ens"), "--data",
                str(tmp_path / "data"), "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr
    loaded = evaluate.load_split(tmp_path / "data")
    assert json.loads((tmp_path / "e.json").read_text())["dice"] == pytest.approx(
        metrics.evaluate_masks(predict_masks(models, loaded.images), loaded.masks,
                               loaded.names)["dice"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="not an ensemble file"):
        checkpoint.resolve([tmp_path / "bad.json"])


def test_members_cli_with_jobs_and_resume(tmp_path):
    out = tmp_path / "ens"
    common = ["--base", "2", "--depth", "2", "--batch-size", "4", "--phantom-train", "8",
              "--phantom-val", "4", "--lr", "1e-2", "--no-progress", "--out", str(out)]
    r = run_cli("cmr.train", "--members", "2", "--jobs", "2", "--epochs", "1", *common)
    assert r.returncode == 0, r.stderr
    assert "[member 0]" in r.stdout and "[member 1]" in r.stdout and "Ensemble of the 2" in r.stdout
    # --resume continues every member to the new epoch count, as uninterrupted runs would
    assert train.main(["--resume", "--epochs", "2", *common]) == 0
    for k in (0, 1):
        logs = (out / f"member{k}" / "log.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in logs] == [1, 2]
        train.run(dict(TINY, seed=k, split_seed=0), tmp_path / f"alone{k}", say=quiet,
                  progress=False)
        _, a, _ = checkpoint.load(out / f"member{k}" / "last.npz")
        _, b, _ = checkpoint.load(tmp_path / f"alone{k}" / "last.npz")
        for name in a:      # a worker process has one BLAS thread: sums may round differently
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    r = run_cli("cmr.train", "--members", "2", "--jobs", "0", *common)
    assert r.returncode == 2 and "--jobs must be >= 1" in r.stderr
    r = run_cli("cmr.train", "--members", "0", *common)
    assert r.returncode == 2 and "--members must be >= 1" in r.stderr


def test_a_new_run_in_an_old_folder_is_refused_unless_forced(tmp_path):
    """issue 27, item 4: a finished run is never replaced silently; --force replaces it
    (said) and starts a new log."""
    train.run(dict(TINY, epochs=2), tmp_path, say=quiet, progress=False)
    before = {name: (tmp_path / name).read_bytes() for name in ("best.npz", "log.jsonl")}
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--force"):
        train.run(dict(TINY, epochs=1), tmp_path, say=quiet, progress=False)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    said = []
    train.run(dict(TINY, epochs=1), tmp_path, say=said.append, progress=False, overwrite=True)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1
    assert any(line.startswith("--force: deleted the earlier run's best.npz") for line in said)


def test_cpu16_strong_x3_is_the_three_recorded_seeds():
    """The preset's members are the configurations that the three recorded runs of the
    results page's width-16 ensemble wrote (tests/fixtures/recorded_runs.json)."""
    args = train.build_parser().parse_args(["--preset", "cpu16-strong-x3"])
    members = train.member_configs(train.config_from_args(args))
    for member, folder in zip(members, ("inst_strong_e200", "s1_inst_strong_e200",
                                        "s2_inst_strong_e200")):
        recorded = RECORDED["configs"][f"cmr_runs/{folder}"]
        skip = ("data", "backend", "split_seed", "members")  # a coursework root has one split
        assert_recorded(member, recorded, skip, folder)
    assert len(members) == 3


def test_gpu64_acdc_x3_is_the_three_recorded_gpu_runs():
    """The preset of the acdc96 result is what ran on the GPU: B4, B5, B6 of
    benchmarks/gpu_train.sh SET=acdc3 (their configurations: tests/fixtures/recorded_runs.json)."""
    args = train.build_parser().parse_args(["--preset", "gpu64-acdc-x3"])
    members = train.member_configs(train.config_from_args(args))
    assert len(members) == 3
    for member, name in zip(members, ("B4", "B5", "B6")):
        recorded = RECORDED["configs"][f"gpu_train_acdc3/{name}"]
        skip = ("data", "extra_data", "backend")        # paths of that machine; cuda there
        assert_recorded(member, recorded, skip, name)
        assert recorded["backend"] == "cuda" and recorded["extra_data"].endswith("acdc96")


def test_cuda_training_matches_numpy_first_steps(device):
    """The same U-Net, weights and batches trained for a few Adam steps on each backend: the
    first loss and every first gradient agree to float32 rounding, later losses closely (Adam
    divides by sqrt(v), which magnifies rounding in near-zero gradients), and the loss falls."""
    if device == "cpu":
        pytest.skip("compares the CUDA backend with the NumPy one")
    import minicnn
    from minicnn import optim
    from cmr import data, phantom
    from cmr.unet import UNet
    if REAL:
        split = data.load_coursework(Path(REAL) / "cmr", "train")
    else:
        split = phantom.make_phantom(16, seed=1)
    loss_fn = train.make_loss("ce+dice", train.DEFAULTS["class_weights"])
    minicnn.manual_seed(0)
    state = UNet(1, 4, base=8, depth=4, init="he").state_dict()
    runs = {}
    for dev in ("cpu", "cuda"):
        model = UNet(1, 4, base=8, depth=4, init="he")
        model.load_state_dict(state)
        model.to(dev)
        opt = optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
        losses, grads = [], None
        for step in range(6):
            idx = slice(8 * (step % 2), 8 * (step % 2) + 8)
            x = minicnn.Tensor(split.images[idx, None].astype(np.float32)).to(dev)
            loss = loss_fn(model(x), split.masks[idx].astype(np.int64))
            opt.zero_grad()
            loss.backward()
            if grads is None:
                grads = {k: minicnn.Tensor(p.grad).numpy() for k, p in model.named_parameters()}
            opt.step()
            losses.append(loss.item())
        runs[dev] = losses, grads
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = runs["cpu"], runs["cuda"]
    np.testing.assert_allclose(gpu_loss[0], cpu_loss[0], rtol=1e-5)
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-3)
    for losses in (cpu_loss, gpu_loss):         # the same batch, 4 steps later
        assert losses[4] < losses[0] and losses[5] < losses[1]
    for name, ref in cpu_grad.items():     # relative L2 error per parameter tensor: the first
        # layers' gradients sum ~10^5 terms of both signs, so single elements can differ by a
        # few per cent between two float32 summation orders (seen: 4e-4 relative in L2 on H100)
        err = np.linalg.norm(gpu_grad[name] - ref) / np.linalg.norm(ref)
        assert err < 2e-3, f"{name}: relative L2 error {err:.2e}"
