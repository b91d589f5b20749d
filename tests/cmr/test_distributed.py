"""Data parallelism (cmr.distributed): the loss terms of simulated ranks in one process, then
``mpiexec`` runs of cmr.train against one process (these skip, saying why, without mpi4py or
an ``mpiexec``; ``pip install ".[mpi]"`` installs both)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minicnn
from cmr import distributed, train
from cmr.unet import UNet

ROOT = Path(__file__).resolve().parents[2]


def test_launched_size_reads_the_launchers_variables():
    assert distributed.launched_size({}) == 1
    assert distributed.launched_size({"PMI_SIZE": "3", "PMI_RANK": "0"}) == 3      # MPICH hydra
    assert distributed.launched_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4            # Open MPI


def test_shares_cover_the_batch_in_order():
    for n in range(0, 12):
        for size in range(1, 5):
            parts = distributed.shares(n, size)
            assert np.concatenate([np.arange(n)[s] for s in parts]).tolist() == list(range(n))
            lengths = [s.stop - s.start for s in parts]
            assert max(lengths) - min(lengths) <= 1


def test_one_process_imports_no_mpi():
    code = ("import sys; from cmr import distributed, train; "
            "w = distributed.world(1, 'numpy', 1.0); "
            "assert type(w) is distributed.OneProcess and 'mpi4py' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _gradients(model, loss_fn, images, masks, batch_masks):
    model.zero_grad()
    x = minicnn.Tensor(np.ascontiguousarray(images[:, None], dtype=np.float32))
    loss = loss_fn(model(x), masks.astype(np.int64), batch_masks)
    loss.backward()
    return loss.item(), [p.grad.copy() if p.grad is not None else np.zeros(p.shape, np.float32)
                         for p in model.parameters()]


def _ranks_against_one(name, size, n=5):
    """(summed value, summed gradients) of ``size`` simulated ranks' terms and the same of
    the whole batch's loss, on one model."""
    rng = np.random.default_rng(1)
    images = rng.random((n, 16, 16), dtype=np.float32)
    masks = rng.integers(0, 4, (n, 16, 16))
    weights = (0.1, 0.3, 0.3, 0.3)
    minicnn.manual_seed(0)
    model = UNet(1, 4, 2, 2, "he", "none")

    def make(term):
        return train.make_loss(term, weights)
    whole, ref = _gradients(model, distributed.OneProcess().loss(name, make, weights),
                            images, masks, masks)
    term = distributed.share_loss(name, make, weights)
    value, grads = 0.0, [np.zeros_like(g) for g in ref]
    for part in distributed.shares(n, size):
        v, g = _gradients(model, term, images[part], masks[part], masks)
        value += v
        grads = [a + b for a, b in zip(grads, g)]
    return value, grads, whole, ref


@pytest.mark.parametrize("name", ["ce", "focal"])
@pytest.mark.parametrize("size", [2, 3, 7])       # 7 ranks, 5 images: two ranks get none
def test_summed_terms_are_the_batch_loss_and_gradient(name, size):
    # float32 sums in another order: values to 1e-6 relative, gradients to 1e-5 of the largest
    value, grads, whole, ref = _ranks_against_one(name, size)
    assert value == pytest.approx(whole, rel=1e-6)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * np.abs(r).max() + 1e-9)


def test_dice_terms_are_only_an_approximation():
    # the Dice loss divides sums over the whole batch: the image-weighted terms differ
    value, grads, whole, ref = _ranks_against_one("dice", 2)
    assert value != pytest.approx(whole, rel=1e-4)
    assert abs(value - whole) < 0.1


# ------------------------------------------------------------------------------- mpiexec
def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install ".[mpi]")')
    exe = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip('no mpiexec on PATH (pip install ".[mpi]" installs MPICH\'s)')
    return exe


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def _mpi(*args, timeout=240):
    return subprocess.run([_mpiexec(), *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


TRAIN = [sys.executable, "-m", "cmr.train", "--preset", "quick", "--epochs", "1",
         "--base", "4", "--depth", "2", "--phantom-val", "5", "--optimizer", "sgd",
         "--no-progress"]


def _trained(out):
    params = dict(np.load(out / "last.npz"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return params, log


@pytest.mark.parametrize("ranks, extra", [
    (2, ["--loss", "ce", "--phantom-train", "21"]),          # batches 8, 8, 5: shares 4/4, 2/3
    (3, ["--loss", "focal", "--phantom-train", "9", "--batch-size", "4"]),  # last batch: 1 image
    (2, ["--loss", "ce", "--phantom-train", "13", "--deep-supervision"]),  # level 1's labels too
])
def test_mpiexec_trains_as_one_process(tmp_path, ranks, extra):
    """SGD (an update linear in the gradient), so that the parameters after the steps differ
    by float32 rounding of the sums only: 1e-6 (the parameters are below 1 in size). Adam
    divides by sqrt(v) element by element, which magnifies the rounding of near-zero
    gradients (measured: up to 9e-4 after 3 steps at lr 3e-3), so it is not the oracle."""
    one, many = tmp_path / "one", tmp_path / "many"
    r = subprocess.run([*TRAIN, *extra, "--out", one], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    r = _mpi("-n", ranks, *TRAIN, *extra, "--out", many)
    assert r.returncode == 0, r.stderr
    assert f"{ranks} ranks" in r.stdout and r.stdout.count("epoch   1/1") == 1   # rank 0 only
    (p1, log1), (pn, logn) = _trained(one), _trained(many)
    assert log1[0]["loss"] == pytest.approx(logn[0]["loss"], rel=1e-6)
    assert p1.keys() == pn.keys()
    for k in p1:
        if p1[k].dtype.kind == "f":
            np.testing.assert_allclose(pn[k], p1[k], rtol=0, atol=1e-6, err_msg=k)
    # validation split over the ranks and gathered: the same scores as one process
    for c in ("RV", "Myo", "LV"):
        assert logn[0]["val_dice"][c] == pytest.approx(log1[0]["val_dice"][c], abs=1e-3)


def _rank_script(fault):
    return ("import os, time, numpy as np\n"
            "from minicnn.nn.module import Parameter\n"
            "from cmr import distributed\n"
            "w = distributed.world(2, 'numpy', 2.0)\n"
            f"if w.rank == 1: {fault}\n"
            "p = Parameter(np.zeros(3, np.float32)); p.grad = np.ones(3, np.float32)\n"
            "w.sum_gradients([p], 1.0)\n")


@pytest.mark.parametrize("fault", ["time.sleep(120)", "os._exit(1)"])
def test_a_dead_or_hung_rank_stops_the_job(fault):
    t0 = time.perf_counter()
    r = _mpi("-n", 2, sys.executable, "-c", _rank_script(fault), timeout=90)
    assert r.returncode != 0
    assert time.perf_counter() - t0 < 60
    if "sleep" in fault:      # the 2 s deadline on the all-reduce, not a hang
        assert ("error: rank 0 of 2: no answer from the other ranks for 2 s in the gradient "
                "all-reduce") in r.stderr


def _one_error_line(r):
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_launches_give_one_clear_line(tmp_path):
    line = _one_error_line(_mpi("-n", 3, *TRAIN, "--batch-size", "2", "--out", tmp_path))
    assert "3 ranks but a batch of 2 images" in line
    line = _one_error_line(_mpi("-n", 1, *TRAIN, "--out", tmp_path, ":",
                                "-n", 1, *TRAIN, "--batch-size", "4", "--out", tmp_path))
    assert "rank 1 was started with another configuration than rank 0: batch_size 4 " \
           "(rank 0: 8)" in line


def test_mpiexec_resume_continues_to_the_same_result(tmp_path):
    """Every rank reloads last.npz (parameters, optimizer, random generator): two epochs in one
    go and one epoch plus --resume give the same parameters, bit for bit."""
    args = [*TRAIN, "--loss", "ce", "--phantom-train", "12"]
    assert _mpi("-n", 2, *args, "--epochs", "2", "--out", tmp_path / "straight").returncode == 0
    assert _mpi("-n", 2, *args, "--out", tmp_path / "resumed").returncode == 0
    r = _mpi("-n", 2, *args, "--epochs", "2", "--resume", "--out", tmp_path / "resumed")
    assert r.returncode == 0 and "Resuming" in r.stdout, r.stderr
    (a, log_a), (b, log_b) = _trained(tmp_path / "straight"), _trained(tmp_path / "resumed")
    assert [h["loss"] for h in log_a] == [h["loss"] for h in log_b]
    assert a.keys() == b.keys()
    for k in a:
        if k != "meta":                 # (the metadata holds the epochs' timings)
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_mpiexec_refuses_a_run_folder_once_and_force_replaces_it(tmp_path):
    """Rank 0 alone decides about the folder (cmr.runfolder): an earlier run is refused in
    one line, not once per rank; --force replaces it and the job trains."""
    args = [*TRAIN, "--loss", "ce", "--phantom-train", "4", "--out", tmp_path / "run"]
    assert _mpi("-n", 2, *args).returncode == 0
    line = _one_error_line(_mpi("-n", 2, *args))
    assert "already holds a run" in line and "--force" in line
    r = _mpi("-n", 2, *args, "--force")
    assert r.returncode == 0 and "--force: deleted the earlier run's" in r.stdout, r.stderr
    assert r.stdout.count("--force: deleted") == 1
