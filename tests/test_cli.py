"""`python -m dtrio` as a process: its version, help without a command, and the demo's store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dtrio

ROOT = Path(__file__).resolve().parents[1]


def dtrio_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTRIO_")}
    return subprocess.run(
        [sys.executable, "-m", "dtrio", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
    )


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    done = dtrio_cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"dtrio {dtrio.__version__}\n"
    assert dtrio.__version__ == version("dtrio")


def test_without_a_command_it_prints_help_and_runs_nothing(tmp_path: Path) -> None:
    done = dtrio_cli(cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("usage: python -m dtrio")
    assert "serve" in done.stderr and "demo" in done.stderr and "--version" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no demo ran, no store was created


def test_the_demo_keeps_its_own_store_apart_from_the_sidecars(tmp_path: Path) -> None:
    done = dtrio_cli("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "COMPLETED ['Hello, Tokyo!', 'Hello, London!', 'Hello, Seattle!']" in done.stdout
    assert (tmp_path / "dtrio-demo.sqlite3").exists()
    assert not (tmp_path / "dtrio.sqlite3").exists()
