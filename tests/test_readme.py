"""The README's example runs, and its commands name things that exist."""
import re
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
    for preset in re.findall(r"--preset (\w+)", text):
        from cmr.train import PRESETS
        assert preset in PRESETS
