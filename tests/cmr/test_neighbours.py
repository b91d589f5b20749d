"""2.5D input (cmr.train --neighbours K): each slice between its stack's neighbours, in
training, evaluation, cmr.predict and NIfTI volumes."""
import json

import numpy as np
import pytest

import minicnn
from cmr import checkpoint, evaluate, metrics, nifti, predict, train
from cmr.phantom import make_phantom
from cmr.predict import model_inputs, neighbour_index, predict_logits, predict_masks, \
    predict_probs
from cmr.unet import UNet
from test_train import write_split_folder

TINY = dict(train.DEFAULTS, base=2, depth=2, epochs=1, batch_size=4, lr=1e-2)


def quiet(*_):
    pass


def unet(channels, seed=0):
    minicnn.manual_seed(seed)
    return UNet(channels, 4, base=4, depth=2, init="he").eval()


def test_neighbour_index_walks_each_stack_and_repeats_its_ends():
    positions = [("a", 1), ("a", 2), ("a", 4), None, ("b", 7), ("a", 3)]
    np.testing.assert_array_equal(neighbour_index(positions, 6, 1), [
        [0, 0, 1],        # a1: nothing below, a2 above
        [0, 1, 5],        # a2: a1, a3 (the last of the list)
        [5, 2, 2],        # a4: a3 below, nothing above
        [3, 3, 3],        # a slice alone
        [4, 4, 4],        # the only slice of stack b
        [1, 5, 2]])
    # two away: a missing neighbour is the nearest slice present between it and the slice
    np.testing.assert_array_equal(neighbour_index(positions, 6, 2)[1], [0, 0, 1, 5, 2])
    np.testing.assert_array_equal(neighbour_index(None, 3, 1), [[0, 0, 0], [1, 1, 1],
                                                                [2, 2, 2]])
    with pytest.raises(ValueError, match="2 slice positions for 3 slices"):
        neighbour_index(positions[:2], 3, 1)


def test_model_inputs_stack_the_neighbours_as_channels():
    images = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    positions = [("s", 2), ("s", 1), ("s", 3), None]
    np.testing.assert_array_equal(model_inputs(unet(1), images, positions), images[:, None])
    x = model_inputs(unet(3), images, positions)
    assert x.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(x[0], images[[1, 0, 2]])      # slice 2 between 1 and 3
    np.testing.assert_array_equal(x[3], images[[3, 3, 3]])
    assert model_inputs(unet(3), x) is x                        # already stacked
    with pytest.raises(ValueError, match="inputs of 3 channels for a model of 5"):
        model_inputs(unet(5), x)


def test_probabilities_of_a_2p5d_model_and_an_ensemble_with_a_2d_one():
    rng = np.random.default_rng(1)
    images = rng.random((5, 8, 8)).astype(np.float32)
    positions = [("v", i) for i in range(5)]
    wide, plain = unet(3, seed=1), unet(1, seed=2)
    stacked = images[neighbour_index(positions, 5, 1)]
    expected = predict_logits(wide, stacked)
    np.testing.assert_allclose(predict_probs(wide, images, positions=positions), expected,
                               rtol=1e-6)
    # without positions every slice is alone: another input, another answer
    alone = predict_probs(wide, images)
    assert np.abs(alone - expected).max() > 1e-4
    both = predict_probs([wide, plain], images, positions=positions)
    np.testing.assert_allclose(both, (expected + predict_logits(plain, images)) / 2, rtol=1e-6)
    # test-time flips mirror every channel left-right, and the answer back
    flipped = predict_probs(wide, images, flip_tta=True, positions=positions)
    mirror = predict_logits(wide, stacked[..., ::-1])[..., ::-1]
    np.testing.assert_allclose(flipped, (expected + mirror) / 2, rtol=1e-6)


@pytest.fixture(scope="module")
def stacks_folder(tmp_path_factory):
    """Ten 'patients' of three phantom slices each, named patientPPP_frame01_sliceSS."""
    folder = tmp_path_factory.mktemp("stacks")
    names = [f"patient{i // 3 + 1:03d}_frame01_slice{i % 3 + 1:02d}" for i in range(30)]
    write_split_folder(folder, make_phantom(30, seed=3), names)
    return folder


def test_training_with_neighbours_sees_each_slice_between_its_neighbours(
        stacks_folder, tmp_path, monkeypatch, capsys):
    cfg = dict(TINY, data=str(stacks_folder), neighbours=1)
    seen = []

    def spy(images, masks, rng, config):
        seen.append(np.array(images))
        return train_augment(images, masks, rng, config)
    train_augment = train.augment_batch
    monkeypatch.setattr(train, "augment_batch", spy)
    train.run(cfg, tmp_path, say=quiet, progress=False)
    training, _ = train.load_data(cfg, quiet)
    by_image = {im.tobytes(): n for n, im in zip(training.names, training.images)}
    image_of = dict(zip(training.names, training.images))
    assert seen and all(batch.ndim == 4 and batch.shape[1] == 3 for batch in seen)
    checked = 0
    for batch in seen:
        for below, centre, above in batch:
            stack, s = metrics.slice_position(by_image[centre.tobytes()])
            for got, t in ((below, max(s - 1, 1)), (above, min(s + 1, 3))):
                np.testing.assert_array_equal(got, image_of[f"{stack}_slice{t:02d}"])
            checked += 1
    assert checked == len(training)
    model, meta = checkpoint.load_model(tmp_path / "last.npz")
    assert meta["model"]["in_channels"] == 3 and meta["train"]["neighbours"] == 1
    # cmr.evaluate finds the neighbours by the slices' names
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "last.npz"), "--data",
                          str(stacks_folder), "--json", str(out), "--no-progress"]) == 0
    # 2-D crops with other names: each slice is its own neighbour, and the user is told
    crops = tmp_path / "crops"
    write_split_folder(crops, make_phantom(2, seed=4))
    assert predict.main(["--checkpoint", str(tmp_path / "last.npz"), "--input",
                         str(crops / "image"), "--out", str(tmp_path / "pred"),
                         "--no-progress"]) == 0
    assert "2 of the 2 slices are not named <stack>_slice<NN>" in capsys.readouterr().out
    split = evaluate.load_split(stacks_folder)
    assert predict.alone_note([model], evaluate.positions_of(split)) is None
    preds = predict_masks(model, split.images, positions=evaluate.positions_of(split))
    expected = metrics.evaluate_masks(preds, split.masks, split.names)
    assert json.loads(out.read_text())["dice"]["mean"] == pytest.approx(
        expected["dice"]["mean"], abs=1e-12)


def test_a_2p5d_model_segments_a_volume_with_each_slices_neighbours():
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (4, 96, 96)).astype(np.float64)
    crops[:, 30:60, 30:60] += 200
    volume = np.zeros((130, 150, 4))
    volume[20:116, 35:131] = crops.transpose(1, 2, 0)
    model = unet(3, seed=3)
    labels = nifti.segment_volume(model, volume, scale=1.0, centre=(20 + 48, 35 + 48))
    images = np.stack([nifti.normalise_crop(c) for c in crops])
    expected = predict_masks(model, images, positions=[("v", i) for i in range(4)])
    np.testing.assert_array_equal(labels[20:116, 35:131].transpose(2, 0, 1), expected)
    assert (predict_masks(model, images) != expected).any()      # the neighbours counted


def test_neighbours_flag_reaches_the_config_and_is_checked():
    parse = train.build_parser().parse_args
    assert train.config_from_args(parse(["--neighbours", "1"]))["neighbours"] == 1
    assert train.config_from_args(parse([]))["neighbours"] == 0
    with pytest.raises(ValueError, match="--neighbours must be >= 0, got -1"):
        train.config_from_args(parse(["--neighbours", "-1"]))
