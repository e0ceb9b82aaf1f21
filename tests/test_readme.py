"""The README's library example is a contract: it must run as printed and learn."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_library_example_runs_and_learns(capsys):
    blocks = python_blocks()
    assert len(blocks) == 2, "the README shows the sampler loop and the trainer"
    namespace: dict = {}
    for block in blocks:  # the second block continues the first
        exec(compile(block, str(README), "exec"), namespace)
    assert "distinct samples seen" in capsys.readouterr().out
    # 20 epochs of a fresh 30 % subset cover nearly everything (1 - 0.7**20 > 99.9 %).
    assert namespace["coverage"].fraction > 0.99
    summary = namespace["summary"]
    assert summary.final_test_accuracy > 0.5  # ten classes: chance is 0.1
    assert summary.optimizer_steps == 20 * -(-round(0.3 * 4000) // 128)
