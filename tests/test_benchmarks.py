"""The benchmark scripts run (``--quick``, tiny shapes) and write agreeing reports, so they
cannot rot. Each script runs in a subprocess, exactly as a person would run it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _torch_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _run(script, device, out):
    cmd = [sys.executable, os.path.join(BENCH, f"{script}.py"), "--quick", "--device", device,
           "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", ["bench_ops", "bench_train"])
def test_quick_run_writes_agreeing_reports(script, device, tmp_path):
    if device == "cuda" and not _torch_cuda():
        pytest.skip("PyTorch has no CUDA here")
    proc = _run(script, device, tmp_path)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    for ext in ("json", "md", "png"):
        path = tmp_path / f"{script}.{ext}"
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing"
    assert (tmp_path / f"{script}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((tmp_path / f"{script}.json").read_text())
    meta = data["meta"]
    for key in ("date", "command", "cpu", "numpy", "torch", "device"):
        assert meta.get(key), f"metadata {key} missing"
    assert meta["device"] == device and "--quick" in meta["command"]
    assert data["all_agree"] is True
    rows = data["rows"]
    assert rows
    agree = [r["agree"] for r in rows if r.get("agree") is not None]
    assert agree and all(v is True for v in agree)
    for r in rows:
        if r.get("ratio") is not None:
            assert r["ratio"] > 0
    if script == "bench_ops":
        kinds = " ".join(r["layer"] for r in rows)
        for name in ("conv3x3", "conv1x1", "upconv", "maxpool", "relu", "CE", "Adam"):
            assert name in kinds
        assert all(r["ours_ms"] > 0 and r["theirs_ms"] > 0 for r in rows)
        assert all(r["rel_err"] <= r["tol"] for r in rows)
    else:
        assert all(v["agree"] is True for v in data["agreement"].values())
        assert set(data["workers"]) == {"ours", "torch"}
        assert {"training step", "forward, no_grad"} <= {r["metric"] for r in rows}

    md = (tmp_path / f"{script}.md").read_text()
    assert md.startswith(f"# {script}") and "--quick" in md and "| ratio ours/theirs |" in md
    if script == "bench_train" and device == "cpu":
        # the reader's facts: CPU, BLAS and its kernels, the threads of each (--quick: one)
        assert meta["minicnn_threads"] == 1 and meta["torch_threads"] == 1
        assert f"CPU {meta['cpu']}" in md and "threads: ours 1" in md and "torch 1" in md
        if meta.get("openblas_core"):
            assert meta["blas_threads"] == 1 and f"kernels {meta['openblas_core']}" in md


@pytest.mark.parametrize("script", ["bench_step_ab", "profile_step"])
def test_cpu_step_scripts_run(script):
    """The interleaved step comparison and the step's profile run (``--quick``) and print
    what they promise."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, f"{script}.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    if script == "bench_step_ab":
        for name in ("ours ", "ours-blas ", "torch "):
            assert f"\n{name}" in proc.stdout
        assert proc.stdout.count("rel diff to torch") == 3
    else:
        for text in ("conv2d_forward", "outside the primitives", "matrix products:",
                     "the step without its products"):
            assert text in proc.stdout


def test_agreement_measure():
    sys.path.insert(0, BENCH)
    try:
        import common
    finally:
        sys.path.remove(BENCH)
    import numpy as np
    ref = np.array([0.0, 2.0, -4.0])
    assert common.agreement(ref, ref) == (0.0, True)
    err, ok = common.agreement(ref + np.array([0, 0, 3e-3]), ref)
    assert ok and err == pytest.approx(7.5e-4)               # 3e-3 / max(1, 4)
    assert not common.agreement(ref + np.array([0, 0, 5e-3]), ref)[1]
    assert not common.agreement(np.zeros(2), np.zeros(3))[1]            # shapes differ
    assert not common.agreement(np.array([np.nan]), np.array([0.0]))[1]  # NaN never agrees
    # small values: an absolute tolerance of 1e-3
    assert common.agreement(np.array([5e-4]), np.array([0.0]))[1]


def test_machine_line_names_the_conv_build(monkeypatch):
    """A CUDA report names the conv build, the untimed changes and the precision it timed: the
    configuration in force, made from MINICNN_CONV_VARIANT, MINICNN_CUDA_UNTIMED and
    MINICNN_CUDA_PRECISION once (gpu_check.sh times each configuration in its own process)."""
    sys.path.insert(0, BENCH)
    try:
        import common
    finally:
        sys.path.remove(BENCH)
    from minicnn.backend.cuda import config
    monkeypatch.setattr(config, "_current", None)
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "vec4+fastdiv")
    meta = common.machine_info("cuda", query_gpu=False)
    assert meta["conv_variant"] == "fastdiv+vec4" and meta["untimed"] == "none"
    assert "conv kernels 'fastdiv+vec4', untimed changes 'none'" in common.machine_line(meta)
    monkeypatch.setattr(config, "_current", None)
    monkeypatch.setenv("MINICNN_CUDA_UNTIMED", "all")            # gpu_check's steps 6a / 7a
    meta = common.machine_info("cuda", query_gpu=False)
    assert meta["untimed"] == "all" and "untimed changes 'all'" in common.machine_line(meta)
    assert meta["precision"] == "fp32" and "TF32" not in common.machine_line(meta)
    monkeypatch.delenv("MINICNN_CUDA_UNTIMED")
    monkeypatch.setattr(config, "_current", None)
    monkeypatch.setenv("MINICNN_CUDA_PRECISION", "tf32")         # gpu_check's step 6b
    meta = common.machine_info("cuda", query_gpu=False)
    assert meta["precision"] == "tf32"
    assert "our convolutions in TF32" in common.machine_line(meta)
    monkeypatch.delenv("MINICNN_CUDA_PRECISION")
    monkeypatch.setattr(config, "_current", None)
    monkeypatch.setenv("MINICNN_CONV_VARIANT", "winograd")       # left the library: refused
    with pytest.raises(ValueError, match="MINICNN_CONV_VARIANT='winograd'"):
        common.machine_info("cuda", query_gpu=False)


def test_variants_table_from_stored_reports(tmp_path):
    """``bench_variants.sh --table`` turns one bench_train report per conv build variant into one
    table, with each variant's step time relative to "plain" (the reports: the H200 run)."""
    import shutil
    src = os.path.join(BENCH, "results", "cuda", "h200_3777504", "variants")
    for name in ("plain", "fastdiv_prefetch_vec4"):
        shutil.copytree(os.path.join(src, name), tmp_path / name)
    proc = subprocess.run(["bash", os.path.join(BENCH, "bench_variants.sh"), "--table",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "variants.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["plain", "fastdiv+prefetch+vec4"]
    plain_ms, fast_ms = (float(r.split("|")[2]) for r in rows)
    assert rows[0].rstrip(" |").endswith("1.00x")
    assert rows[1].rstrip(" |").endswith(f"{plain_ms / fast_ms:.2f}x")
    empty = subprocess.run(["bash", os.path.join(BENCH, "bench_variants.sh"), "--table",
                            str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert empty.returncode != 0 and "no bench_train.json" in empty.stderr


# A cuobjdump -sass listing in miniature: one kernel whose loop (0x20..0x60, the branch back
# to 0x20) holds 2 FFMAs and 3 other instructions, and a second loop without FFMA.
SASS = """
        Function : conv2d_forward_m64n64_f32
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*0020*/                   LDS.128 R4, [R8] ;
        /*0030*/                   FFMA R10, R4, R5, R10 ;
        /*0040*/                   FFMA R11, R6, R7, R11 ;
        /*0050*/                   IADD3 R2, R2, 0x8, RZ ;
        /*0060*/              @!P0 BRA 0x20 ;
        /*0070*/                   IADD3 R3, R3, 0x1, RZ ;
        /*0080*/               @P1 BRA 0x70 ;
        /*0090*/                   EXIT ;
        Function : splitk_reduce_f32
        /*0000*/                   FADD R1, R2, R3 ;
"""


def test_sass_census_finds_the_k_loop():
    sys.path.insert(0, BENCH)
    try:
        import sass_census
    finally:
        sys.path.remove(BENCH)
    funcs = sass_census.split_functions(SASS)
    assert list(funcs) == ["conv2d_forward_m64n64_f32", "splitk_reduce_f32"]
    assert sass_census.opcode("@!P0 BRA 0x20") == "BRA"
    assert sass_census.opcode("LDS.128 R4, [R8]") == "LDS"
    rows = sass_census.census(SASS)
    assert list(rows) == ["conv2d_forward_m64n64_f32"]
    r = rows["conv2d_forward_m64n64_f32"]
    assert (r["instructions"], r["ffma"], r["other_per_ffma"]) == (5, 2, 1.5)
    assert r["opcodes"] == {"FFMA": 2, "LDS": 1, "IADD3": 1, "BRA": 1}


@pytest.mark.skipif(not all(shutil.which(t) for t in ("nvcc", "cuobjdump", "nvdisasm")),
                    reason="needs nvcc, cuobjdump and nvdisasm (pip install "
                    "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
def test_planner_overheads_are_the_census_means(tmp_path):
    from minicnn.backend.cuda import planner
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "sass_census.py"), "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    means = json.loads((tmp_path / "sass_census.json").read_text())["tile_means"]
    assert means.keys() == planner.TILE_OVERHEAD.keys()
    for tile, value in means.items():
        assert abs(value - planner.TILE_OVERHEAD[tile]) < 0.02, (tile, value)


def test_plan_model_reproduces_the_measured_conv_times():
    """The planner's cost model against the H200 measurements of the default build (NOTES.md
    entry 13): one scale factor, then most rows within 15 %."""
    report = os.path.join(ROOT, "benchmarks", "results", "cuda", "h200_3777504",
                          "ops_fastdiv_prefetch_vec4", "bench_ops.json")
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "plan_model.py"), report],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("model vs measured"))
    within, total = (int(v) for v in line.split(", ")[1].split(" rows")[0].split(" of "))
    assert total == 39 and within >= 0.75 * total, line
    assert "with the 'tiles' planner" in proc.stdout


def test_cpu_reports_name_the_openblas_kernels():
    """A CPU report names the kernel set of NumPy's OpenBLAS: OPENBLAS_CORETYPE, when a
    machine sets it, decides between kernels twice as fast or not (README)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import common; "
            "m = common.machine_info('cpu'); print(m['openblas_core'], "
            "m['openblas_coretype_env']); print(common.machine_line(m))")
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    core, _, line = r.stdout.partition("\n")
    if core.startswith("None"):
        pytest.skip("NumPy's BLAS here is not an OpenBLAS this helper can ask")
    assert core == "Haswell Haswell"       # the kernels the variable named, and the variable
    assert ", OpenBLAS kernels Haswell" in line


SELFCHECK_RUNNER = """
import os, sys
sys.path[:0] = [{tests!r}, {root!r}]
import emulator as emu
class Setter:
    def setattr(self, obj, name, value):
        setattr(obj, name, value)
emu.use_the_emulated_gpu(Setter(), {build!r}, os.environ.get("MINICNN_CUDA_PRECISION", "fp32"))
cupy = emu.runtime.cupy
cupy.__version__ = "fake"          # the script's own switch: small shapes, no timings
sys.modules["cupy"] = cupy
exec(compile(open({script!r}).read(), "gpu_check.sh selfcheck", "exec"))
"""


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="no C++ compiler (g++ or $CXX) to build the kernel emulator")
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_gpu_check_selfcheck_passes_in_the_emulator(precision, tmp_path, tmp_path_factory):
    """gpu_check.sh's self-check (steps 2 and 2c), the Python it hands to the GPU machine, run
    here on the emulated GPU with its small "fake" shapes: every check passes, in fp32 and
    with MINICNN_CUDA_PRECISION=tf32 (against numpy_backend's TF32 emulation), so that the one
    prepared GPU call does not fail on a slip of its own."""
    import re
    text = open(os.path.join(BENCH, "gpu_check.sh")).read()
    body = re.search(r"\nselfcheck\(\) \{.*?<<'EOF'\n(.*?)\nEOF\n", text, re.S).group(1)
    (tmp_path / "selfcheck.py").write_text(body)
    runner = tmp_path / "run.py"
    runner.write_text(SELFCHECK_RUNNER.format(
        tests=os.path.join(ROOT, "tests"), root=ROOT, script=str(tmp_path / "selfcheck.py"),
        build=str(tmp_path_factory.getbasetemp())))
    r = subprocess.run([sys.executable, str(runner)], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, MINICNN_CUDA_PRECISION=precision))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"precision: {precision}" in r.stdout
    summary = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d{3,} checks, 0 failures, [\d.]+s", summary), summary
