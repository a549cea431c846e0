"""Every program in examples/ runs unattended, exits 0 and prints what it promises."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))

EXPECTED = {
    "activity_sequence.py": "COMPLETED: ['Hello, Tokyo!', 'Hello, London!', 'Hello, Seattle!']",
    "fan_out_fan_in.py": "COMPLETED: 55 words in 10 lines",
    "human_interaction.py": "COMPLETED: order #1234 was approved by the unattended approver",
    "distributed_tracing.py": "COMPLETED: ['Hello, Tokyo!', 'Hello, Tokyo again!']",
}


def test_the_known_examples_exist():
    assert set(EXPECTED) <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(example)],
        check=False,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if example.name in EXPECTED:
        assert EXPECTED[example.name] in proc.stdout.splitlines(), proc.stdout
