"""The recipes of ``cmr.train``: its defaults (the original coursework's recipe) and the named
presets (``--preset NAME``), each with the comment that says where it comes from and what it
was measured to give, and the time it was measured to take (shown by ``--help``).

A preset is data: the settings it changes from ``DEFAULTS``; explicit flags override it.
"""
import textwrap

DEFAULTS = dict(data=None, backend="numpy", epochs=50, batch_size=25, lr=2e-4, betas=(0.9, 0.99),
                class_weights=(0.1, 0.3, 0.3, 0.3), loss="ce", optimizer="adam", base=64,
                depth=4, init="torch", norm="none", augment="default", seed=0,
                schedule="constant", weight_decay=0.0, phantom_train=200, phantom_val=40,
                extra_data=None, extra_transpose=False, extra_val=False, flip_tta=False,
                split_seed=None, members=1, precision="fp32", deep_supervision=False)
PRESETS = {
    # the README's first command: a few minutes on a 2-core CPU, on the phantom
    "quick": dict(epochs=8, base=8, batch_size=8, lr=3e-3, loss="ce+dice", init="he",
                  phantom_train=160, phantom_val=20),
    # the original coursework recipe, as written
    "original": dict(),
    # a width-16 U-Net that a 2-core CPU trains in about 15 minutes on the 100 coursework images
    "cpu16": dict(base=16, init="he", loss="ce+dice", schedule="cosine", lr=1e-3, batch_size=10,
                  epochs=60),
    # the original width (31M parameters) for a GPU (--backend cuda): about 2 minutes on an H100
    "gpu64": dict(base=64, init="he", loss="ce+dice", schedule="cosine", lr=5e-4, batch_size=10,
                  epochs=100),
}
# the recipe for the ACDC data (docs/unet.md): cpu16 with instance normalisation for 50 epochs,
# meant for --data <cmr> --extra-data <acdc96> (stored transposed): 22-55 min on 2 idle cores
PRESETS["cpu16-acdc"] = dict(PRESETS["cpu16"], epochs=50, norm="instance", extra_transpose=True)
# the recipe of the shipped model (cmr/models/README.md, docs/results.md): cpu16-acdc with a loss
# at each decoder scale; three seeds: held-out ACDC 3-D Dice 0.862 +- 0.003 against 0.857 +- 0.003
PRESETS["cpu16-acdc-ds"] = dict(PRESETS["cpu16-acdc"], deep_supervision=True)
# the best acdc96 result on the corrected split (docs/unet.md): cpu16-acdc with strong augmentation
# for 100 epochs, scored with cmr.evaluate --min-confidence 0.75 (chosen on acdc96 val): 45-90 min
PRESETS["cpu16-acdc-strong"] = dict(PRESETS["cpu16-acdc"], epochs=100, augment="strong")
# the best recipe measured on the 100 cmr/train slices alone (docs/unet.md): gpu64 with instance
# normalisation and strong augmentation for 200 epochs (--backend cuda; about 4 min on an H200)
PRESETS["gpu64-strong"] = dict(PRESETS["gpu64"], epochs=200, norm="instance", augment="strong")
# the same recipe at width 16 (about 40 min on one CPU core), and three seeds of it as one
# ensemble: the best cmr/train-only result measured on a CPU (--jobs 2 trains two at a time)
PRESETS["cpu16-strong"] = dict(PRESETS["cpu16"], epochs=200, norm="instance", augment="strong")
PRESETS["cpu16-strong-x3"] = dict(PRESETS["cpu16-strong"], members=3)
# the recipe meant for the acdc96 target (docs/unet.md; measured on the old, leaking split only):
# three seeds of gpu64-strong for 30 epochs on --data <cmr> --extra-data <acdc96> as one
# ensemble (--backend cuda --jobs 3; the three side by side trained in 4 min on an H200),
# scored with cmr.evaluate --min-confidence 0.6
PRESETS["gpu64-acdc-x3"] = dict(PRESETS["gpu64-strong"], epochs=30, extra_transpose=True,
                                members=3)

#: What each preset costs, as measured (the comments above; README, docs/unet.md): shown by
#: --help next to the preset's settings.
PRESET_TIMES = {
    "quick": "a few minutes on a 2-core CPU (phantom data)",
    "original": "not timed on a CPU (width 64, 31M parameters: meant for a GPU)",
    "cpu16": "about 15 min on a 2-core CPU (the 100 coursework images)",
    "gpu64": "CPU not timed; about 2 min on an H100 (--backend cuda)",
    "cpu16-acdc": "22 min on 2 idle CPU cores with AVX-512, about 55 with AVX2 only "
                  "(--data cmr --extra-data acdc96)",
    "cpu16-acdc-ds": "as cpu16-acdc (the extra heads cost no measurable time)",
    "cpu16-acdc-strong": "45-90 min on a 2-core CPU (--data cmr --extra-data acdc96)",
    "gpu64-strong": "CPU not timed; about 4 min on an H200 (--backend cuda)",
    "cpu16-strong": "about 40 min on one CPU core",
    "cpu16-strong-x3": "48 min on the CPU for the three (README's run; --jobs 2)",
    "gpu64-acdc-x3": "CPU not timed; the three side by side in 4 min on an H200 (--jobs 3)",
}


def presets_help():
    """The --help text of the presets: each one's settings (what it changes from the defaults)
    and its expected time."""
    lines = ["presets (--preset NAME; explicit flags override them):"]
    for name in sorted(PRESETS):
        changes = " ".join(f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool)
                           else f"--{k.replace('_', '-')}"
                           for k, v in PRESETS[name].items()) or "the defaults"
        lines += textwrap.wrap(f"{name}: {changes}; time: {PRESET_TIMES[name]}", 92,
                               initial_indent="  ", subsequent_indent="      ",
                               break_on_hyphens=False)
    return "\n".join(lines)
