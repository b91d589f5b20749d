"""Count the instructions of each convolution kernel's K loop in its machine code (SASS).

    python benchmarks/sass_census.py [--variant V] [--arch sm_90] [--out DIR]

Compiles ``kernels/conv.cu`` with ``nvcc --cubin`` for one build variant (default: the default
build plus the "tiles" feature, so that every tile exists), disassembles it with
``cuobjdump -sass`` (CUDA toolkit, or ``pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm``: cuobjdump runs nvdisasm, both in ``nvidia/cu13/bin``) and, for every
float32 GEMM kernel, finds the K loop: the backward branch whose range holds the most FFMAs.
It prints, per kernel, the loop's instructions, its FFMAs and the other instructions per FFMA
(index arithmetic, loads, stores, barriers, branches), the mean per tile over the three 3x3
problems (forward, input gradient, weight gradient), and writes ``sass_census.json`` and
``sass_census.md`` to ``--out``.

A *static* count: both sides of every branch inside the loop are counted once, and nothing
says how long each instruction waits. It needs no GPU, and it compares tiles and build
features by how much work besides the FMAs each K step issues; `minicnn.backend.cuda.planner.TILE_OVERHEAD`
(the "tiles" planner's model) holds these means.
"""
import argparse
import collections
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minicnn.backend.cuda import planner  # noqa: E402  (importable without CuPy)
from minicnn.backend.cuda.config import CudaConfig  # noqa: E402

PROBLEMS = ("forward", "backward_input", "backward_weight")   # the three 3x3 GEMMs
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\s+(0x[0-9a-f]+)")      # cuobjdump prints absolute targets


def split_functions(sass):
    """``{kernel name: [(address, instruction text), ...]}`` of a ``cuobjdump -sass`` listing."""
    out = {}
    parts = re.split(r"\n\s*Function : (\S+)", sass)     # [before, name, body, name, body, ...]
    for name, body in zip(parts[1::2], parts[2::2]):
        out[name] = [(int(m.group(1), 16), m.group(2))
                     for m in map(_INSTR.match, body.splitlines()) if m]
    return out


def opcode(text):
    """The opcode without its modifiers: ``@!P0 LDG.E.CONSTANT R4, ...`` -> ``LDG``."""
    words = text.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def k_loop(instrs):
    """The loop body with the most FFMAs: the instructions from a backward branch's target to
    the branch. None if the function has no loop with an FFMA."""
    best = None
    for addr, text in instrs:
        m = _BRANCH.search(text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        body = [t for a, t in instrs if int(m.group(1), 16) <= a <= addr]
        ffma = sum(opcode(t) == "FFMA" for t in body)
        if ffma and (best is None or ffma > best[0]):
            best = (ffma, body)
    return None if best is None else best[1]


def census(sass):
    """Per float32 GEMM kernel: loop instructions, FFMAs, other per FFMA, opcode counts."""
    rows = {}
    for name, instrs in split_functions(sass).items():
        if not (name.startswith("conv2d_") and name.endswith("_f32")):
            continue
        body = k_loop(instrs)
        if body is None:
            continue
        ops = collections.Counter(opcode(t) for t in body)
        rows[name] = {"instructions": len(body), "ffma": ops["FFMA"],
                      "other_per_ffma": (len(body) - ops["FFMA"]) / ops["FFMA"],
                      "opcodes": dict(ops.most_common())}
    return rows


def tile_means(rows):
    """Mean other-instructions-per-FFMA of each tile over the three 3x3 problems."""
    means = {}
    for tile in planner.TILES:
        vals = [rows[f"conv2d_{p}_{tile}_f32"]["other_per_ffma"] for p in PROBLEMS
                if f"conv2d_{p}_{tile}_f32" in rows]
        if len(vals) == len(PROBLEMS):
            means[tile] = sum(vals) / len(vals)
    return means


def _version(tool):
    out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "release" in line), "unknown")


def disassemble(variant, arch):
    """(the SASS listing of conv.cu built as ``variant`` for ``arch``, tool versions)"""
    nvcc = shutil.which("nvcc")
    cuobjdump = shutil.which("cuobjdump")
    if not (nvcc and cuobjdump and shutil.which("nvdisasm")):
        sys.exit("needs nvcc, cuobjdump and nvdisasm on PATH (CUDA toolkit, or `pip install "
                 "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` and their nvidia/cu13/bin on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "conv.cubin")
        kernels = os.path.join(ROOT, "kernels")
        subprocess.run([nvcc, "-std=c++17", f"-arch={arch}", "--cubin",
                        *CudaConfig.from_variant(variant).conv_options(), "-I", kernels,
                        os.path.join(kernels, "conv.cu"), "-o", cubin], check=True)
        sass = subprocess.run([cuobjdump, "-sass", cubin], check=True, capture_output=True,
                              text=True).stdout
    return sass, {"nvcc": _version(nvcc), "cuobjdump": _version(cuobjdump)}


def markdown(rows, means, variant, arch, meta):
    lines = [f"# SASS census of kernels/conv.cu, variant `{variant}`, {arch}", "",
             f"`python benchmarks/sass_census.py --variant {variant} --arch {arch}`  ",
             f"nvcc: {meta['nvcc']}; cuobjdump: {meta['cuobjdump']}; date: {meta['date']}", "",
             "| kernel | loop instructions | FFMA | other per FFMA |", "|---|---|---|---|"]
    for name, r in sorted(rows.items()):
        lines.append(f"| {name} | {r['instructions']} | {r['ffma']} | "
                     f"{r['other_per_ffma']:.2f} |")
    lines += ["", "Mean other instructions per FFMA over forward, input and weight gradient:", "",
              "| tile | mean |", "|---|---|"]
    lines += [f"| {t} | {m:.2f} |" for t, m in means.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default=CudaConfig().variant,
                    help="MINICNN_CONV_VARIANT of the build (default: the default build)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", help="write sass_census.json and sass_census.md here")
    args = ap.parse_args(argv)
    variant = CudaConfig.from_variant(args.variant).variant     # refuses a bad name
    sass, meta = disassemble(variant, args.arch)
    meta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = census(sass)
    means = tile_means(rows)
    text = markdown(rows, means, variant, args.arch, meta)
    print(text, end="")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sass_census.json"), "w") as f:
            json.dump({"variant": variant, "arch": args.arch, "meta": meta, "kernels": rows,
                       "tile_means": means}, f, indent=1)
        with open(os.path.join(args.out, "sass_census.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
