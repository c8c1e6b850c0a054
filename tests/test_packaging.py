"""A plain (non-editable) install carries the catalogue: the CLI works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as pip builds it and unpacked as pip installs it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("mesh_log_analyzer-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_wheel_ships_every_pattern_file_and_subpackage(installed: Path) -> None:
    shipped = sorted(p.name for p in (installed / "analyzer" / "patterns").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "patterns").glob("*.yaml"))
    source_packages = {p.parent.relative_to(ROOT) for p in (ROOT / "analyzer").rglob("__init__.py")}
    for package in source_packages:
        assert (installed / package / "__init__.py").is_file(), f"{package} is missing from the wheel"


def test_installed_cli_finds_its_catalogue_from_any_directory(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANALYZER_PATTERNS_DIR"}
    env["PYTHONPATH"] = str(installed)
    where = subprocess.run(
        [sys.executable, "-c", "import analyzer; print(analyzer.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(installed)), "the test must run the installed copy, not the checkout"
    checked = subprocess.run(
        [sys.executable, "-m", "analyzer", "rules", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "ok:" in checked.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "analyzer", "rules", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0 and "istiod-apiserver-unreachable" in listed.stdout, listed.stderr
