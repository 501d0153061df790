"""A non-editable install into a fresh virtual environment works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_migrations_and_templates_and_runs_anywhere(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, cwd=tmp_path)
    [wheel] = dist.glob("regindex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "regindex/migrations/env.py" in names
    assert any(n.startswith("regindex/migrations/versions/0001") for n in names)
    assert any(n.startswith("regindex/templates/") and n.endswith(".j2") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", str(wheel)], check=True, timeout=600)
    exe = venv / "bin" / "regindex"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REGINDEX_DB", "REGINDEX_CONFIG")}
    # the installed package, not the source tree, must be what runs
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import regindex; print(regindex.__file__)"],
                           capture_output=True, text=True, check=True, cwd=elsewhere, env=env).stdout
    assert str(venv) in where
    r = subprocess.run([str(exe), "demo", "d"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "d" / "regindex.db").is_file()
    r = subprocess.run([str(exe), "db", "current", "--db", "d/regindex.db"], capture_output=True, text=True,
                       cwd=elsewhere, env=env, check=True)
    assert "up to date" in r.stdout
    reports = list((elsewhere / "d" / "reports").glob("*.html"))
    assert reports, "the demo writes a report with the templates shipped in the wheel"
