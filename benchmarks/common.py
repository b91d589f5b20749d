"""Shared code of the benchmark scripts: machine info, timing, agreement checks and the
JSON / markdown / PNG reports.

The scripts are run as ``python benchmarks/<script>.py`` (this folder is then on
``sys.path``, so ``import common`` works); they put the repository root on ``sys.path``
themselves so that ``minicnn`` and ``cmr`` import without installing anything.

Timing rules (see ``benchmarks/NOTES.md``):

* CPU: ``time.perf_counter`` around each call, medians; a pause between the two libraries'
  blocks of runs, so that one library's idle worker threads (OpenBLAS threads keep spinning
  for a while after a call) do not steal cores from the other.
* CUDA: CUDA events recorded on the stream each library launches on (``cupy.cuda.Event``
  for minicnn, ``torch.cuda.Event`` for PyTorch), warm-up runs first, medians.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# fp32 agreement: max |ours - ref| <= FP32_TOL * max(1, max |ref|)
FP32_TOL = 1e-3
TF32_TOL = 2e-2

# A pause between the libraries' blocks of runs on the CPU (OpenBLAS worker threads
# busy-wait about 0.1 s after a call before they sleep; OpenMP's for a shorter time).
CPU_SWITCH_PAUSE_S = 0.3


# =========================================================================== options
def network_arguments(doc, quick_help):
    """An argument parser with the options both benchmarks share: the device, ``--quick`` and
    the U-Net and batch measured (width, depth, batch, image size). ``quick_apply`` sets what
    ``--quick`` means once the arguments are parsed."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--size", type=int, default=96)
    return p


def quick_apply(args):
    """``--quick``: base 4, batch 2, 32x32 and 2 timed runs unless ``--repeats`` says."""
    if args.quick:
        args.base, args.batch, args.size = 4, 2, 32
        args.repeats = args.repeats or 2


# =========================================================================== machine
def cpu_count():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def openblas_core():
    """The kernel set NumPy's OpenBLAS runs ("Haswell": AVX2, "SkylakeX": AVX-512, ...), asked
    from the library NumPy loaded, or None when NumPy's BLAS is not an OpenBLAS found here.
    OpenBLAS picks it from the CPU when it is loaded, unless OPENBLAS_CORETYPE names one: some
    machines set that variable for old OpenBLAS builds, which costs a current one speed."""
    from minicnn.backend import blas_threads
    return blas_threads.corename()


def _version(module_name):
    """A package's version without importing it (CuPy's import is slow and may fail)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:   # pragma: no cover
        return None
    names = {"cupy": ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")}.get(
        module_name, (module_name,))
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return None


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def gpu_name():
    """The name of CUDA device 0 (through torch, else CuPy), or None."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:   # noqa: BLE001
        pass
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:   # noqa: BLE001
        return None


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device, query_gpu=True):
    """Everything needed to reproduce / compare a run (``query_gpu=False``: leave the GPU's
    name out, e.g. in a parent process that must not open a CUDA context)."""
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)]
                            + sys.argv),
        "device": device,
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "load_average_1_5_15min": load_average(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "cupy": _version("cupy"),
        "git": _git_commit(),
    }
    if device == "cpu":
        from minicnn.backend import blas_threads
        info["openblas_core"] = openblas_core()
        info["openblas_coretype_env"] = os.environ.get("OPENBLAS_CORETYPE")
        info["blas"] = blas_threads.config()           # library, version, threading, kernels
        info["blas_threads"] = blas_threads.get()
    if device == "cuda":
        from minicnn.backend.cuda import config   # importable without CuPy
        info["conv_variant"] = config.current().variant   # the build in force (read once)
        info["untimed"] = config.current().untimed_name   # untimed changes on (none: shipped)
        info["precision"] = config.current().precision    # of our convolutions (fp32: default)
        if query_gpu:
            info["gpu"] = gpu_name()
    return info


def machine_line(meta):
    """One line naming the machine, for table headers."""
    where = f"{meta.get('gpu')}, conv kernels '{meta.get('conv_variant', 'plain')}', " \
        f"untimed changes '{meta.get('untimed', 'none')}'" + (
            f", our convolutions in {meta['precision'].upper()}"
            if meta.get("precision", "fp32") != "fp32" else "") \
        if meta.get("device") == "cuda" else f"{meta['cpu']} ({meta['cores']} cores)" + (
            f", OpenBLAS kernels {meta['openblas_core']}" if meta.get("openblas_core") else "")
    load = meta.get("load_average_1_5_15min")
    load = f", load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}" if load else ""
    return (f"{where}{load}; numpy {meta['numpy']}, torch {meta['torch']}, "
            f"cupy {meta['cupy']}; git {meta['git']}")


# =========================================================================== arrays
def to_numpy(a):
    """A NumPy array from a NumPy / CuPy array or a torch tensor."""
    if hasattr(a, "detach"):          # torch
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def agreement(ours, ref, tol=FP32_TOL):
    """``(rel_err, ok)``: ``rel_err = max|ours - ref| / max(1, max|ref|)``, ok if <= tol
    (and the shapes agree, and nothing is NaN)."""
    a = np.asarray(to_numpy(ours), dtype=np.float64)
    b = np.asarray(to_numpy(ref), dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), False
    if a.size == 0:
        return 0.0, True
    err = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
    return err, bool(err <= tol)     # NaN compares False


# =========================================================================== timing
def _median(values):
    return float(statistics.median(values)) if values else float("nan")


def time_host(fn, repeats, warmup=1, budget_s=None, min_repeats=3, warm_s=0.05):
    """Milliseconds of each of up to ``repeats`` calls of ``fn`` (after ``warmup`` calls, and
    more warm-up calls until ``warm_s`` seconds have passed: a fast op timed straight after a
    pause would otherwise measure the wake-up of sleeping worker threads and an idle core's
    clock, not the op), on the host clock. With ``budget_s``, fewer runs (at least
    ``min_repeats``) when the warm-up shows they would take longer than that."""
    t_warm, start, done = None, time.perf_counter(), 0
    while done < warmup or (done < 1000 and time.perf_counter() - start < warm_s):
        t0 = time.perf_counter()
        fn()
        t_warm = time.perf_counter() - t0
        done += 1
    n = repeats
    if budget_s is not None and t_warm:
        n = max(min(repeats, min_repeats), min(repeats, int(budget_s / t_warm)))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_cupy(fn, repeats, warmup=3):
    """Milliseconds per call of ``fn`` (which launches CuPy work), from CUDA events on
    CuPy's current stream."""
    import cupy
    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(float(cupy.cuda.get_elapsed_time(start, end)))
    return times


def time_torch_cuda(fn, repeats, warmup=3):
    """Milliseconds per call of ``fn`` (which launches torch CUDA work), from CUDA events
    on torch's current stream."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return times


def summary(times):
    """Median, min and number of runs of a list of milliseconds."""
    return {"median_ms": _median(times), "min_ms": float(min(times)) if times else float("nan"),
            "runs": len(times)}


# =========================================================================== reports
def fmt(value, digits=3):
    """A number for a table cell ('' for None / NaN)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits - 1, 1)}f}"
    return str(value)


def markdown_table(columns, rows):
    """``columns``: list of (key, heading); ``rows``: list of dicts."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def text_table(columns, rows):
    """The same table, aligned for a terminal."""
    cells = [[h for _, h in columns]] + [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    out = []
    for n, c in enumerate(cells):
        out.append("  ".join(v.rjust(w) if n and i > 2 else v.ljust(w)
                             for i, (v, w) in enumerate(zip(c, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _clean(o):
    """NaN / inf are not JSON: None (null) instead."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def plot_ratios(path, labels, ratios, targets, title):
    """Horizontal bars of ``ratios`` (ours / theirs), green where <= the row's target, red
    otherwise, with each row's target marked and the parity line at 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.22 * n + 1.2)))
    ys = np.arange(n)
    vals = [r if r is not None and math.isfinite(r) and r > 0 else float("nan") for r in ratios]
    colors = ["tab:gray" if t is None else ("tab:green" if v <= t else "tab:red")
              for v, t in zip(vals, targets)]
    finite = [v for v in vals if math.isfinite(v)] + [t for t in targets if t] + [1.0]
    lo, hi = min(finite) / 1.5, max(finite) * 1.5
    # bars start at the left edge of a log axis; ratios span orders of magnitude
    ax.barh(ys, [v - lo if math.isfinite(v) else 0 for v in vals], left=lo, color=colors,
            height=0.7)
    for y, t in zip(ys, targets):
        if t is not None:
            ax.plot([t, t], [y - 0.45, y + 0.45], color="black", lw=1.5)
    for y, v in zip(ys, vals):
        if math.isfinite(v):
            ax.text(v * 1.03, y, f"{v:.2f}", va="center", fontsize=6)
    ax.axvline(1.0, color="tab:blue", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi * 1.3)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("ratio ours / theirs, log scale (black tick: target; dashed: parity; "
                  "green: target met, red: missed, gray: no target)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out_dir, name, meta, columns, rows, summary_lines, plot, extra=None):
    """Write ``out_dir/name.{json,md,png}``.

    ``plot``: (labels, ratios, targets, title) for ``plot_ratios``; ``extra``: more JSON
    fields (totals, flags).
    """
    os.makedirs(out_dir, exist_ok=True)
    data = {"name": name, "meta": meta, "rows": rows}
    data.update(extra or {})
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(_clean(data), f, indent=1, default=_json_default)
        f.write("\n")
    md = [f"# {name}", "",
          f"`{meta['command']}`  ",
          f"machine: {machine_line(meta)}  ",
          f"date: {meta['date']}", "",
          markdown_table(columns, rows), ""]
    md += [f"- {line}" for line in summary_lines]
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    plot_ratios(os.path.join(out_dir, f"{name}.png"), *plot)
    return data
