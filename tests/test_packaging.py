"""What the distribution ships: the license and the PEP 561 marker, built from a copy of the
source tree (the build leaves nothing in the checkout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_license_and_py_typed(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "dtrio", source / "dtrio",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--quiet",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("dtrio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dtrio/py.typed" in names and "dtrio/_pb/py.typed" in names
    (license_file,) = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert "MIT License" in zipfile.ZipFile(wheel).read(license_file).decode()
