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


def test_build_world_prints_the_cached_model(world_model_dir, capsys) -> None:
    from firm_ray.cli.main import main

    assert main(["build-world"]) == 0
    assert (
        f"warm-start model: {world_model_dir}" in capsys.readouterr().out
    )  # already built by the fixture: finds it in the cache
    assert (world_model_dir / "config.json").exists()
    assert (world_model_dir / "tokenizer.json").exists()


def test_sweep_arguments_are_checked_before_ray_starts(tmp_path, capsys) -> None:
    from firm_ray.cli.main import main

    assert main(["sweep"]) == 2
    assert "give a SWEEP_FILE, or --resume SWEEP_DIR" in capsys.readouterr().out
    assert main(["sweep", "a.yaml", "--resume", str(tmp_path)]) == 2
    assert main(["sweep", "--resume", str(tmp_path), "--output-dir", "x"]) == 2
    assert "drop --output-dir" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: sweep file not found" in capsys.readouterr().out
    assert main(["sweep", "--resume", str(tmp_path)]) == 1  # not a sweep directory
    assert "not a sweep directory" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sweep:\n  name: s\n  base: nowhere.yaml\n  space: {algorithm.beta: {grid: [0]}}\n"
    )
    assert main(["sweep", str(bad)]) == 2
    assert "sweep.base nowhere.yaml" in capsys.readouterr().out
