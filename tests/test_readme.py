"""The README's example runs, and its commands name things that exist."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_the_loss_goes_down(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    losses = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_readme_commands_reference_real_modules():
    text = README.read_text()
    for module in re.findall(r"python -m (cmr\.\w+)", text):
        assert (README.parent / (module.replace(".", "/") + ".py")).is_file(), module
    for preset in re.findall(r"--preset ([\w-]+)", text):
        from cmr.presets import PRESETS
        assert preset in PRESETS, preset


def test_readme_commands_use_existing_options():
    """Every --option of a `python -m cmr.X` command (continuation lines included) is one
    that `python -m cmr.X --help` lists."""
    text = README.read_text()
    helps = {}
    for module, rest in re.findall(r"python -m (cmr\.\w+)((?:\\\n|[^\n])*)", text):
        if module not in helps:
            r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                               text=True, cwd=README.parent, timeout=120)
            assert r.returncode == 0, r.stderr
            helps[module] = set(re.findall(r"--[a-z][\w-]*", r.stdout))
        for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
            assert option in helps[module], f"{module} has no option {option}"
    assert {"cmr.train", "cmr.evaluate"} <= set(helps)
