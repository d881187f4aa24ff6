"""The installed entry points answer --version/--help without importing torch or ray."""

from __future__ import annotations

import shutil
import subprocess
import sys

from firm_ray import __version__


def test_python_dash_m_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "firm_ray", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"firm-ray {__version__}"


def test_console_script_help_is_light() -> None:
    script = shutil.which("firm-ray")
    assert script is not None, "firm-ray console script not installed (run scripts/setup.sh)"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "check-config" in out.stdout
    probe = "import sys, firm_ray.cli.main; print('torch' in sys.modules, 'ray' in sys.modules)"
    light = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert light.stdout.strip() == "False False"
