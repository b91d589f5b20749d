"""Make the model that ships with cmr, and the figures of its model card.

    python docs/scripts/ship_model.py RUN [RUN ...] --data DATA \
        [--out benchmarks/results/cpu/shipped_model]

Each ``RUN`` is a ``cmr.train`` run folder trained with acdc96 (``--preset cpu16-acdc-ds --data
DATA/cmr --extra-data DATA/acdc96``, one per seed, ``--split-seed 0``); ``DATA`` holds
``cmr/``, ``acdc96/`` and ``acdc96vol/``. A run whose configuration is not the preset's
(``--preset``, the model card's name; seeds, data folders and backend aside) is refused. Steps:

1. Of every run's ``best.npz`` (chosen on ``cmr/val`` during training) and ``last.npz``,
   keep the one with the highest ACDC mean Dice (3-D, per volume) on acdc96vol's
   *validation* patients: patients no run trained on and that are not the test patients.
   The test patients play no part in any choice.
2. Export it with float16 parameters (``cmr.checkpoint.export``) to ``cmr/models/``.
3. Score the float32 checkpoint and the float16 export side by side on ``cmr/val`` (slice
   Dice), acdc96's held-out test patients (slice Dice, ``--transpose``) and acdc96vol's
   same test patients (ACDC's 3-D Dice per volume, ED and ES; slice Dice beside it), and
   write the table (``shipped_model.md``) and the full results (``shipped_model.json``).
   The scores go into the export's ``meta["card"]`` too.
"""
import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cmr import checkpoint, metrics, presets, runfolder  # noqa: E402
from cmr.evaluate import evaluate, load_split  # noqa: E402

PRESET = "cpu16-acdc-ds"                # the shipped model's recipe: its card's name
VOLUMES = "acdc96vol test (volumes)"    # the one set of whole volumes: ACDC's 3-D Dice


def scores(models, root):
    """{set: result} for the three scored sets (slice Dice; 3-D where volumes are whole)."""
    sets = {"cmr/val": load_split(root / "cmr", "val"),
            "acdc96 test (slices)": load_split(root / "acdc96", "test").transposed(),
            VOLUMES: load_split(root / "acdc96vol", "test")}
    return {name: evaluate(models, split) for name, split in sets.items()}


def row(name, result):
    d = result["dice"]
    cells = [f"{d['RV']:.3f}", f"{d['Myo']:.3f}", f"{d['LV']:.3f}", f"**{d['mean']:.3f}**"]
    if name == VOLUMES:                 # acdc96's volumes lack their end slices
        vol = result["volumes"]
        v = vol["dice"]
        ed, es = (vol["phases"][p]["dice"]["mean"] for p in ("ED", "ES"))
        cells += [f"{v['RV']:.3f}", f"{v['Myo']:.3f}", f"{v['LV']:.3f}", f"**{v['mean']:.3f}**",
                  f"{ed:.3f} / {es:.3f}", str(vol["n_volumes"])]
    else:
        cells += [""] * 6
    return f"| {name} | {result['n_images']} | " + " | ".join(cells) + " |"


def check_preset(run, preset):
    """Refuse a run folder whose recorded configuration is not ``preset``'s."""
    try:
        have = dict(presets.DEFAULTS, **runfolder.saved_config(run))
    except checkpoint.CheckpointError as err:
        sys.exit(f"error: {err}")
    want = dict(presets.DEFAULTS, **presets.PRESETS[preset])
    ignored = ("data", "extra_data", "seed", "split_seed", "backend")    # not the recipe
    differ = [k for k in want if k not in ignored     # tuples compared as their JSON lists
              and json.loads(json.dumps(want[k])) != have[k]]
    if differ:
        sys.exit(f"error: {run} was not trained with --preset {preset}: "
                 + ", ".join(f"{k} {have[k]!r} (the preset: {want[k]!r})" for k in differ))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu/shipped_model")
    parser.add_argument("--dst", type=Path, default=checkpoint.SHIPPED)
    parser.add_argument("--preset", default=PRESET, choices=sorted(presets.PRESETS),
                        help="the runs' recipe, checked and written on the card")
    args = parser.parse_args(argv)
    for run in args.runs:
        check_preset(run, args.preset)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()

    # 1. a run's best.npz or last.npz, chosen on acdc96vol's validation patients
    val = load_split(args.data / "acdc96vol", "val")
    choice, paths = {}, {}
    for run in args.runs:
        for name in ("best.npz", "last.npz"):
            key = f"{run.name}/{name}"
            paths[key] = run / name
            choice[key] = evaluate(checkpoint.load_model(paths[key])[0], val)["volumes"][
                "dice"]["mean"]
            print(f"{key}: acdc96vol val patients, 3-D mean Dice {choice[key]:.4f}")
    chosen = max(choice, key=choice.get)
    src = paths[chosen]

    # 2. the float16 export, 3. both scored
    checkpoint.export(src, args.dst)
    results = {"float32 " + chosen.split("/")[-1]: scores([checkpoint.load_model(src)[0]], args.data),
               "float16 export": scores([checkpoint.load_model(args.dst)[0]], args.data)}
    meta = checkpoint.load(src)[0]
    card = {"name": args.preset, "source": chosen, "epoch": meta["epoch"],
            "chosen_by": {k: round(v, 4) for k, v in choice.items()},
            "parameters_dtype": "float16", "made": datetime.date.today().isoformat(),
            "commit": commit,
            "scores": {s: {"slice_dice": r["dice"],
                           "volume_dice": r["volumes"]["dice"] if s == VOLUMES else None}
                       for s, r in results["float16 export"].items()}}
    checkpoint.export(src, args.dst, **card)
    size = args.dst.stat().st_size

    lines = [f"# The shipped model ({args.preset})", "",
             f"`python docs/scripts/ship_model.py {' '.join(str(r) for r in args.runs)} "
             + (f"--preset {args.preset} " if args.preset != PRESET else "") + "--data DATA`  ",
             f"date: {card['made']}; git {commit}; CPU (NumPy backend)  ",
             f"source: `{chosen}` (epoch {meta['epoch']}, seed {meta['train']['seed']}), "
             "chosen over the other checkpoints by the 3-D mean Dice on acdc96vol's "
             "validation patients: " + ", ".join(f"{k} {v:.4f}" for k, v in choice.items())
             + "  ",
             f"export: `{args.dst.relative_to(ROOT) if args.dst.is_relative_to(ROOT) else args.dst}`"
             f", float16 parameters, {size / 1e6:.2f} MB", "",
             "| weights | set | slices | RV | Myo | LV | slice mean | RV 3-D | Myo 3-D | "
             "LV 3-D | 3-D mean | ED / ES | volumes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for weights, by_set in results.items():
        for name, result in by_set.items():
            lines.append(f"| {weights} " + row(name, result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shipped_model.md").write_text("\n".join(lines) + "\n")
    brief = {w: {s: {k: v for k, v in r.items() if k != "per_image"} for s, r in by.items()}
             for w, by in results.items()}             # per volume kept, per slice left out
    (args.out / "shipped_model.json").write_text(json.dumps(metrics.jsonable(
        {"card": card, "results": brief}), indent=1, allow_nan=False))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
