"""The model that ships with cmr: its export, and the commands that use it by default."""
import json

import numpy as np
import pytest

import minicnn
from cmr import checkpoint, evaluate, phantom, predict
from cmr.unet import UNet


def test_export_keeps_the_weights_in_float16_and_drops_the_optimizer(tmp_path):
    minicnn.manual_seed(0)
    model = UNet(1, 4, base=4, depth=2, init="he", norm="instance").eval()
    from minicnn import optim
    opt = optim.Adam(model.parameters(), lr=1e-3)
    src, dst = tmp_path / "run.npz", tmp_path / "ship.npz"
    train = {"seed": 0, "data": str(tmp_path / "data" / "cmr"), "extra_data": None}
    checkpoint.save(src, model, {"train": train, "epoch": 3, "history": [1, 2]}, opt)
    checkpoint.export(src, dst, name="tiny", scores={"x": float("nan")})
    meta, params, optim_state = checkpoint.load(dst)
    assert optim_state == [] and "history" not in meta and meta["epoch"] == 3
    assert meta["train"] == {"seed": 0, "data": "DATA/cmr", "extra_data": None}   # no path
    assert meta["card"] == {"name": "tiny", "scores": {"x": None}}
    assert all(p.dtype == np.float16 for p in params.values())
    loaded, _ = checkpoint.load_model(dst)
    for name, value in loaded.state_dict().items():
        assert value.dtype == np.float32
        original = model.state_dict()[name]
        np.testing.assert_allclose(value, original, rtol=1e-3, atol=1e-4, err_msg=name)
    x = phantom.make_phantom(2, seed=1).images.astype(np.float32)
    a = predict.predict_masks(model, x)
    b = predict.predict_masks(loaded, x)
    assert (a == b).mean() > 0.99


def test_no_checkpoint_means_the_shipped_model(tmp_path, capsys):
    assert checkpoint.resolve(None) == checkpoint.resolve([]) == [checkpoint.SHIPPED]
    meta = checkpoint.load(checkpoint.SHIPPED)[0]
    assert meta["model"]["base"] == 16 and meta["card"]["name"] == "cpu16-acdc-ds"
    assert meta["train"]["data"] == "DATA/cmr" and '"/' not in json.dumps(meta)  # no path
    assert checkpoint.SHIPPED.stat().st_size <= 10e6
    assert (checkpoint.SHIPPED.parent / "README.md").is_file()            # its model card
    from PIL import Image
    split, folder = phantom.make_phantom(3, seed=2), tmp_path / "data"
    (folder / "image").mkdir(parents=True)
    (folder / "mask").mkdir()
    for i, (image, mask) in enumerate(zip(split.images, split.masks)):
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
            folder / "image" / f"p{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(folder / "mask" / f"p{i}_mask.png")
    assert evaluate.main(["--data", str(folder), "--json", str(tmp_path / "e.json"),
                          "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "model: the shipped cpu16-acdc-ds (" in out and "3 images" in out
    assert json.loads((tmp_path / "e.json").read_text())["n_images"] == 3


def test_a_missing_shipped_model_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "SHIPPED", tmp_path / "gone.npz")
    with pytest.raises(checkpoint.CheckpointError, match="no --checkpoint given and the "
                       "shipped model .* is missing"):
        checkpoint.resolve(None)


def test_ship_model_refuses_a_run_of_another_recipe(tmp_path):
    """docs/scripts/ship_model.py names the card after --preset: a run folder whose recorded
    configuration differs from it (seed and data folders aside) is refused, by name."""
    import importlib.util
    from pathlib import Path
    from cmr import presets
    script = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "ship_model.py"
    spec = importlib.util.spec_from_file_location("ship_model", script)
    ship_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_model)
    config = dict(presets.DEFAULTS, **presets.PRESETS["cpu16-acdc-ds"], seed=2, split_seed=0,
                  data="/elsewhere/cmr", backend="cuda")
    (tmp_path / "config.json").write_text(json.dumps(config))
    ship_model.check_preset(tmp_path, "cpu16-acdc-ds")              # accepted
    with pytest.raises(SystemExit, match="not trained with --preset cpu16-acdc: "
                       "deep_supervision True"):
        ship_model.check_preset(tmp_path, "cpu16-acdc")
    with pytest.raises(SystemExit, match="^error: nothing to resume in .*: no last.npz or "
                       "config.json$"):
        ship_model.check_preset(tmp_path / "empty", "cpu16-acdc-ds")
