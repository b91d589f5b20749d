"""Data parallelism on one CPU machine: N ranks x 1 thread against 1 rank x N threads.

    python benchmarks/bench_data_parallel.py [--ranks 2] [--bases 8 16] [--repeats 2]
                                             [--images 80] [--out DIR]

Trains one epoch of ``cmr.train --preset quick`` on the phantom (``--images`` slices,
batch 8) for each configuration, alternating them ``--repeats`` times, and reports the
training time per step (the log's ``images_per_s``, validation excluded) with the load
average before and after each run (other people's jobs share the cores). Needs mpi4py and
an ``mpiexec`` (``pip install ".[mpi]"``). Writes ``DIR/bench_data_parallel.json``.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(ranks, threads, base, images, folder):
    """Seconds per training step of one epoch, ``ranks`` processes of ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "cmr.train", "--preset", "quick", "--epochs", "1",
           "--base", str(base), "--phantom-train", str(images), "--phantom-val", "4",
           "--no-progress", "--out", str(folder)]
    if ranks > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks)] + cmd
    load = os.getloadavg()[0]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    record = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
    steps = -(-images // 8)
    return {"ranks": ranks, "threads": threads, "base": base, "images": images,
            "step_s": images / record["images_per_s"] / steps,
            "load_start": load, "load_end": os.getloadavg()[0]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--bases", type=int, nargs="+", default=[8, 16])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--images", type=int, default=80)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    n = args.ranks
    configs = [(1, 1), (1, n), (n, 1)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for base in args.bases:
            for rep in range(args.repeats):
                for ranks, threads in configs:
                    r = one_run(ranks, threads, base, args.images,
                                Path(tmp) / f"b{base}r{ranks}t{threads}x{rep}")
                    runs.append(r)
                    print(f"base {base:3d}  {ranks} rank(s) x {threads} thread(s): "
                          f"{1000 * r['step_s']:8.1f} ms/step  (load {r['load_start']:.2f} -> "
                          f"{r['load_end']:.2f})", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    meta = {"command": " ".join(["python", "benchmarks/bench_data_parallel.py"] +
                                (argv if argv is not None else sys.argv[1:])),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit}
    print("\nbest of the repeats (ms per step of a batch of 8):")
    for base in args.bases:
        best = {c: min(r["step_s"] for r in runs if (r["ranks"], r["threads"]) == c
                       and r["base"] == base) for c in configs}
        print(f"base {base:3d}: " + ",  ".join(f"{r} x {t}: {1000 * s:.1f}"
                                               for (r, t), s in best.items()))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "bench_data_parallel.json"
    path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
