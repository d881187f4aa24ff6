"""The driver's pre-flight (firm_ray.runtime.preflight): every bad input a run would only meet
inside a Ray worker gives a one-line PreflightError naming the config key, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import disk_faults
import pytest

from firm_ray.config import LoraConfig, load_config
from firm_ray.runtime import preflight as pf
from firm_ray.runtime.preflight import PreflightError, adapter_bytes_estimate, preflight

small_disk, read_only_dir = disk_faults.small_disk, disk_faults.read_only_dir  # fixtures
QUICKSTART = Path(__file__).resolve().parents[2] / "tune_configs" / "quickstart.yaml"


def cfg(tmp_path: Path, *overrides: str):
    return load_config(QUICKSTART, [f"experiment.output_dir={tmp_path / 'runs'}", *overrides])


def jsonl(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows))
    return path


def good_rows(n: int) -> list[str]:
    return [
        json.dumps({"prompt": f"question number {i}?", "category": f"c{i % 2}"}) for i in range(n)
    ]


def problem(config, **kwargs) -> str:
    with pytest.raises(PreflightError) as err:
        preflight(config, **kwargs)
    message = str(err.value)
    assert "\n" not in message and err.value.problems == [message]
    return message


@pytest.fixture(autouse=True)
def _hub_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_good_config_passes_and_leaves_no_directory(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "p.jsonl", good_rows(40))
    config = cfg(tmp_path, "data.source=jsonl", f"data.path={data}", "federation.num_clients=2")
    report = preflight(config)
    assert "data: 36 train / 4 eval prompts, partitioned" in report.line()
    assert "output dir writable" in report.line() and not report.skipped
    assert not (tmp_path / "runs").exists()  # created for the probe, removed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_jsonl_with_a_bad_line(tmp_path: Path) -> None:
    rows = good_rows(10)
    rows[6] = '{"prompt": "unterminated'
    data = jsonl(tmp_path / "p.jsonl", rows)
    message = problem(cfg(tmp_path, "data.source=jsonl", f"data.path={data}"))
    assert message.startswith(f"data.path {data} row 7: invalid JSON")


def test_jsonl_missing_field(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "p.jsonl", [*good_rows(3), json.dumps({"text": "hi", "category": "a"})])
    message = problem(cfg(tmp_path, "data.source=jsonl", f"data.path={data}"))
    assert message == (f"data.path {data} row 4: missing field 'prompt' (fields: text, category)")


def test_empty_file(tmp_path: Path) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    message = problem(cfg(tmp_path, "data.source=jsonl", f"data.path={data}"))
    assert message == f"data.path {data}: no prompts (the source is empty)"


def test_csv_with_the_wrong_column(tmp_path: Path) -> None:
    data = tmp_path / "p.csv"
    data.write_text("text,category\nhello there,a\nhow are you,b\n")
    message = problem(cfg(tmp_path, "data.source=csv", f"data.path={data}"))
    assert message == f"data.path {data} row 1: missing field 'prompt' (fields: text, category)"


def test_missing_data_path(tmp_path: Path) -> None:
    data = tmp_path / "nowhere.jsonl"
    message = problem(cfg(tmp_path, "data.source=jsonl", f"data.path={data}"))
    assert message == f"data.path {data}: file not found"


def test_a_partition_the_data_cannot_fill(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "p.jsonl", good_rows(12))
    config = cfg(
        tmp_path,
        "data.source=jsonl",
        f"data.path={data}",
        "federation.num_clients=20",
    )
    message = problem(config)
    assert message.startswith("data.partition (20 clients): scheme 'dirichlet': 11 prompts")


def test_a_large_file_has_its_first_rows_parsed(tmp_path: Path, monkeypatch) -> None:
    rows = good_rows(30)
    rows[24] = "not json"
    data = jsonl(tmp_path / "p.jsonl", rows)
    config = cfg(tmp_path, "data.source=jsonl", f"data.path={data}")
    monkeypatch.setattr(pf, "FULL_CHECK_BYTES", 10)  # the file counts as large
    monkeypatch.setattr(pf, "FIRST_ROWS", 20)
    assert "data: first 20 record(s) parsed" in preflight(config).line()  # row 25 not reached
    monkeypatch.setattr(pf, "FIRST_ROWS", 25)
    assert problem(config).startswith(f"data.path {data} row 25: invalid JSON")


def test_python_reward_module_missing(tmp_path: Path) -> None:
    rewards = (
        "rewards=[{name: relevance, type: relevance}, "
        "{name: mine, type: python, kwargs: {function: no_such_module_xyz.score}}]"
    )
    message = problem(cfg(tmp_path, rewards))
    assert message.startswith(
        "rewards[1].kwargs.function (reward 'mine'): python reward function "
        "'no_such_module_xyz.score': cannot import module 'no_such_module_xyz' "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz'); it must be importable"
    )


def test_python_reward_not_callable(tmp_path: Path) -> None:
    rewards = (
        "rewards=[{name: relevance, type: relevance}, "
        "{name: mine, type: python, kwargs: {function: math.pi}}]"
    )
    message = problem(cfg(tmp_path, rewards))
    assert message.startswith("rewards[1].kwargs.function (reward 'mine')")
    assert "is a float, not a callable" in message


@pytest.mark.parametrize("value", ["/no/such/model_dir", "models/no-such-model"])
def test_missing_model_dir(tmp_path: Path, value: str) -> None:
    message = problem(cfg(tmp_path, f"model.name_or_path={value}"))
    assert message.startswith(f"model.name_or_path {value!r}: not found (no such directory")
    assert "Repo id must be" not in message


def test_missing_model_dir_says_hub_access_is_off(tmp_path: Path) -> None:
    message = problem(cfg(tmp_path, "model.name_or_path=models/no-such-model"))
    assert "hub access is off: HF_HUB_OFFLINE is set" in message


def test_hub_id_with_hub_access_on_is_reported_as_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    report = preflight(cfg(tmp_path, "model.name_or_path=some-org/some-model"))
    assert report.skipped == [
        "model.name_or_path 'some-org/some-model' (hub id: not downloaded to check)"
    ]
    assert "1 not checked" in report.line()


def test_model_dir_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    message = problem(cfg(tmp_path, f"model.name_or_path={tmp_path / 'model'}"))
    assert "the directory has no config.json" in message


def test_reward_model_path(tmp_path: Path) -> None:
    rewards = (
        "rewards=[{name: relevance, type: relevance}, "
        "{name: rm, type: hf_reward_model, kwargs: {model: /no/such/reward_model}}]"
    )
    message = problem(cfg(tmp_path, rewards))
    assert message.startswith(
        "rewards[1].kwargs.model (reward 'rm') '/no/such/reward_model': not found"
    )


def test_unwritable_output_dir(tmp_path: Path, read_only_dir: Path) -> None:
    """A real read-only directory: a read-only tmpfs as root (root ignores chmod), else 0o500."""
    out = read_only_dir / "runs"
    message = problem(cfg(tmp_path, f"experiment.output_dir={out}"))
    assert message.startswith(f"experiment.output_dir '{out}': cannot be created: ")
    assert message.endswith("; choose a writable directory or fix its permissions")
    assert "(EROFS)" in message or "(EACCES)" in message


def test_output_dir_on_a_full_disk(tmp_path: Path, small_disk) -> None:
    small_disk.fill()
    message = problem(cfg(tmp_path, f"experiment.output_dir={small_disk.path}"))
    assert message == (
        f"experiment.output_dir '{small_disk.path}': not writable: No space left on device "
        "(ENOSPC); free some space or choose another directory"
    )


def test_not_enough_free_space(tmp_path: Path, small_disk, monkeypatch) -> None:
    """A real 1 MiB disk (tmpfs); where it cannot be mounted, disk_usage says 1 MiB free."""
    if small_disk.mode != "tmpfs":
        real = pf.shutil.disk_usage
        monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    message = problem(cfg(tmp_path, f"experiment.output_dir={small_disk.path / 'runs'}"))
    assert message.startswith(
        f"experiment.output_dir '{small_disk.path / 'runs'}': 1.0 MiB free, a run needs at "
        "least 64.0 MiB"
    )
    assert not (small_disk.path / "runs").exists()


def test_problems_are_all_listed_one_line_each(tmp_path: Path) -> None:
    config = cfg(
        tmp_path, "model.name_or_path=/no/model", "data.source=jsonl", "data.path=/no/p.jsonl"
    )
    with pytest.raises(PreflightError) as err:
        preflight(config)
    keys = [p.split(" ")[0] for p in err.value.problems]
    assert keys == ["model.name_or_path", "data.path"]


def test_adapter_estimate_is_the_real_adapter_size(world_model_dir: Path) -> None:
    """Checked against peft on the real world model (Llama with GQA): exact for q/k/v/o."""
    from firm_ray.config import ModelConfig
    from firm_ray.models.adapter import get_adapter_state
    from firm_ray.models.policy import load_policy

    lora = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], r=4)
    policy = load_policy(ModelConfig(name_or_path=str(world_model_dir), device="cpu"), lora)
    params = sum(v.numel() for v in get_adapter_state(policy.model).values())
    shape = json.loads((world_model_dir / "config.json").read_text())
    assert adapter_bytes_estimate(shape, lora) == 4 * params


def test_builtin_name_matches_warmstart() -> None:
    from firm_ray.models.warmstart import BUILTIN_PREFIX, BUILTIN_WORLD

    assert (pf.BUILTIN_WORLD, pf.BUILTIN_PREFIX) == (BUILTIN_WORLD, BUILTIN_PREFIX)


def test_preflight_imports_no_ray_and_no_torch() -> None:
    probe = (
        "import sys, firm_ray.runtime.preflight; "
        "print('ray' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_error_log_on_a_full_disk_leaves_nothing_torn(small_disk) -> None:
    """The traceback log of a run that failed because its disk is full: not written, and no
    empty or half-written error.log left behind (bench/faults.py found a 0-byte one); an existing
    log keeps its earlier content."""
    from firm_ray.cli.errors import write_error_log

    try:
        raise RuntimeError("x" * 4096)
    except RuntimeError as err:
        failure = err
    fresh = small_disk.path / "run" / "error.log"
    kept = small_disk.path / "kept.log"
    kept.write_text("earlier run\n")
    small_disk.fill(leave=0)
    assert write_error_log(failure, fresh) is None and not fresh.exists()
    assert write_error_log(failure, kept) is None
    assert kept.read_text() == "earlier run\n"
    small_disk.free()
    assert write_error_log(failure, fresh) == fresh and "xxxx" in fresh.read_text()
