"""Packaging and the house rules: the wheel ships the CUDA sources as minicnn.kernels (never a
top-level `kernels`), and minicnn never imports torch, cmr or (at import time) cupy."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_kernels_inside_minicnn(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("*.whl"))
    assert wheel.name.startswith("minicnn_cmr-")
    names = zipfile.ZipFile(wheel).namelist()
    sources = sorted(p.name for p in (ROOT / "kernels").glob("*.cu*"))
    for name in sources:
        assert f"minicnn/kernels/{name}" in names, name
    assert "minicnn/kernels/__init__.py" in names
    for module in ("__init__", "config", "runtime", "checks", "planner", "conv", "ops"):
        assert f"minicnn/backend/cuda/{module}.py" in names, module   # the CUDA backend
    assert not any(n.startswith("kernels/") for n in names), "a top-level kernels package"
    assert any(n.startswith("cmr/") for n in names)
    assert "cmr/models/cpu16_acdc_ds.npz" in names and "cmr/models/README.md" in names  # shipped


def test_minicnn_never_imports_torch_or_cmr():
    pattern = re.compile(r"^\s*(import|from)\s+(torch|cmr)\b", re.M)
    offenders = [str(p) for p in (ROOT / "minicnn").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders


def test_importing_minicnn_loads_neither_torch_nor_cupy():
    code = ("import sys, minicnn, minicnn.nn, minicnn.optim; "
            "bad = [m for m in ('torch', 'cupy', 'cmr') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
