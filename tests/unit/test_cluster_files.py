"""cluster/ and the real-model configs: every file parses, is wired to files that exist, and keeps
the security defaults (dashboard on 127.0.0.1 or ClusterIP only, token auth, no torch in job envs).

Nothing here starts Ray, a cluster or a download: the launcher YAML is checked against Ray's own
schema, the job submission script runs against a stand-in ``ray`` that prints its arguments.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from firm_ray.config import load_config
from firm_ray.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
TUNE_CONFIGS = REPO / "tune_configs"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
RAYJOB = CLUSTER / "rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
SUBMIT = CLUSTER / "submit.sh"
DOCKERFILE = CLUSTER / "Dockerfile"
REAL_CONFIGS = [TUNE_CONFIGS / "real_qwen_hh.yaml", TUNE_CONFIGS / "real_llama_pku.yaml"]

CONFIG_REF = re.compile(r"tune_configs/[\w./-]+?\.(?:yaml|json)")
RAY_IMAGE = re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rayjob_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d is not None]


def _rayjob() -> dict[str, Any]:
    (job,) = [d for d in _rayjob_docs() if d.get("kind") == "RayJob"]
    return job


def _firm_ray_command(argv: list[str]) -> tuple[str, str, list[str]]:
    """(subcommand, config, --set overrides) of a firm_ray command line."""
    if argv[:3] == ["python", "-m", "firm_ray"]:
        rest = argv[3:]
    else:
        assert argv[0] == "firm-ray", argv
        rest = argv[1:]
    command, config, *options = rest
    overrides = [options[i + 1] for i, opt in enumerate(options) if opt == "--set"]
    return command, config, overrides


def _experiment_yamls() -> list[Path]:
    """tune_configs/*.yaml that are experiments (not DeepSpeed configs, not sweeps)."""
    found = []
    for path in sorted(TUNE_CONFIGS.rglob("*.yaml")):
        if "deepspeed" in path.relative_to(TUNE_CONFIGS).parts[:-1]:
            continue
        data = _load(path)
        if isinstance(data, dict) and "sweep" in data:
            continue
        found.append(path)
    return found


# --------------------------------------------------------------------------- every file


def test_every_cluster_yaml_parses():
    paths = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
    assert {LAUNCHER, RAYJOB, RUNTIME_ENV} <= set(paths)
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_configs_referenced_in_cluster_exist_and_validate():
    """Every tune_configs/... path named anywhere under cluster/ (README included) is real."""
    refs = set()
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            refs |= set(CONFIG_REF.findall(path.read_text()))
    assert "tune_configs/real_qwen_hh.yaml" in refs and "tune_configs/real_llama_pku.yaml" in refs
    for ref in sorted(refs):
        target = REPO / ref
        assert target.is_file(), f"cluster/ names {ref}, which does not exist"
        if target.suffix == ".yaml":
            if "sweep" in yaml.safe_load(target.read_text()):
                load_sweep(target)
            else:
                load_config(target)


def test_readme_commands_validate():
    """The firm-ray run / check-config lines of cluster/README.md load with their overrides."""
    text = (CLUSTER / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["firm-ray"] and argv[1] in ("run", "check-config"):
                commands.append(argv)
    assert len(commands) >= 3
    for argv in commands:
        _, config, overrides = _firm_ray_command(argv)
        load_config(REPO / config, overrides)


# --------------------------------------------------------------------------- tune_configs


def test_every_experiment_config_opens_with_its_command():
    for path in _experiment_yamls():
        first = path.read_text().splitlines()[0]
        rel = path.relative_to(REPO).as_posix()
        assert first.startswith("#"), f"{rel}: first line must be a comment with its command"
        assert "firm-ray run" in first or "python -m firm_ray run" in first, (rel, first)
        assert rel in first, f"{rel}: first line must name the config itself: {first}"


@pytest.mark.parametrize("path", REAL_CONFIGS, ids=lambda p: p.name)
def test_real_model_configs(path: Path):
    text = path.read_text()
    rel = path.relative_to(REPO).as_posix()
    assert "ray job submit" in text and f"python -m firm_ray run {rel}" in text
    cfg = load_config(path)
    assert not cfg.model.name_or_path.startswith("builtin:")
    assert cfg.model.dtype == "bfloat16" and cfg.model.device == "auto"
    assert cfg.lora.r == 16
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.data.source == "hf" and cfg.data.path
    # one rank per client worker: ZeRO partitions nothing, so the torch backend (see the comment)
    assert cfg.trainer.backend == "torch" and cfg.trainer.deepspeed_config is None
    assert cfg.runtime.num_workers > 1 and cfg.runtime.num_gpus_per_worker > 0
    sampled = cfg.federation.clients_sampled_per_round
    assert 2 <= sampled < cfg.federation.num_clients  # partial participation
    assert cfg.federation.min_clients <= sampled <= cfg.runtime.num_workers
    assert cfg.num_objectives >= 2
    assert all(r.type == "hf_reward_model" for r in cfg.rewards)


DEEPSPEED_SWITCH = re.compile(
    r"--set trainer\.micro_batch_size=(\d+) --set trainer\.backend=deepspeed "
    r"--set trainer\.deepspeed_config=(\S+?)`?$",
    re.M,
)


@pytest.mark.parametrize(
    "path", [*REAL_CONFIGS, CLUSTER / "README.md"], ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_deepspeed_switch_given_in_the_docs_is_valid(path: Path):
    """The real configs and cluster/README.md say how to switch to DeepSpeed; that switch loads
    (on every real config) and names a shipped ZeRO-2 file."""
    targets = DEEPSPEED_SWITCH.findall(path.read_text())
    assert targets, f"{path.name}: no '--set trainer.backend=deepspeed ...' line"
    for micro, target in targets:
        ds = yaml.safe_load((REPO / target).read_text())  # JSON is YAML
        assert ds["zero_optimization"]["stage"] == 2
        for config in REAL_CONFIGS:
            overrides = [
                f"trainer.micro_batch_size={micro}",  # the engine takes the whole batch at once
                "trainer.backend=deepspeed",
                f"trainer.deepspeed_config={target}",
            ]
            cfg = load_config(config, overrides)
            assert cfg.trainer.backend == "deepspeed"


@pytest.mark.parametrize("path", REAL_CONFIGS, ids=lambda p: p.name)
def test_real_model_reward_kwargs_are_accepted(path: Path):
    """kwargs are checked when a worker builds the rewards; catch typos here, without a model."""
    import inspect

    from firm_ray.rewards import REGISTRY
    from firm_ray.rewards.hf import FORMATS

    params = inspect.signature(REGISTRY["hf_reward_model"]).parameters.values()
    allowed = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for spec in load_config(path).rewards:
        kwargs = spec.kwargs
        assert set(kwargs) <= allowed, (spec.name, set(kwargs) - allowed)
        assert isinstance(kwargs["model"], str) and "/" in kwargs["model"]
        assert kwargs.get("format", "chat_template") in FORMATS
        if kwargs.get("format") == "concat":
            assert "Assistant:" in kwargs["separator"], "HH-style RMs need the Assistant turn"


# --------------------------------------------------------------------------- launcher


def test_launcher_has_what_ray_up_needs():
    cfg = _load(LAUNCHER)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    for node_type in cfg["available_node_types"].values():
        assert "resources" in node_type and "node_config" in node_type
    # every local file mount exists (relative ones from the repository root, where `ray up` runs)
    for remote, local in cfg["file_mounts"].items():
        if not local.startswith("~"):
            assert (REPO / local).exists(), (remote, local)
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_launcher_validates_against_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    autoscaler = pytest.importorskip("ray.autoscaler")
    import json

    schema = json.loads((Path(autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_load(LAUNCHER), schema)


def test_launcher_dashboard_on_loopback_and_token_auth():
    cfg = _load(LAUNCHER)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    assert "RAY_AUTH_MODE=token" in head
    workers = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --address=" in workers and "RAY_AUTH_MODE=token" in workers


def test_launcher_installs_torch_before_firm_ray():
    """The torch trap: torch first, then the project with torch pinned through PIP_CONSTRAINT."""
    cfg = _load(LAUNCHER)
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = cfg[key]
        torch_at = next(i for i, c in enumerate(commands) if "pip install" in c and "torch" in c)
        pin_at = next(i for i, c in enumerate(commands) if "torch==" in c and "> " in c)
        install_at = next(i for i, c in enumerate(commands) if "PIP_CONSTRAINT=" in c)
        assert torch_at < pin_at < install_at, key
        assert "firm_ray" in commands[install_at]
        for command in commands:
            for req in re.findall(r"pip install[^|&;]*", command):
                if re.search(r"\btorch\b", req):
                    assert "torch==" in req, f"unpinned torch in {key}: {req}"


def test_ray_versions_agree():
    """The launcher images, the Dockerfile and the RayJob use one Ray version."""
    versions = set(RAY_IMAGE.findall(LAUNCHER.read_text()))
    versions |= set(RAY_IMAGE.findall(DOCKERFILE.read_text()))
    versions.add(_rayjob()["spec"]["rayClusterSpec"]["rayVersion"])
    assert len(versions) == 1, versions


# --------------------------------------------------------------------------- KubeRay


def test_rayjob_runs_a_shipped_config():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    command, config, overrides = _firm_ray_command(shlex.split(spec["entrypoint"]))
    assert command == "run"
    assert config.startswith("tune_configs/") and (REPO / config).is_file()
    cfg = load_config(REPO / config, overrides)
    # the run directory is on the shared volume mounted in every pod
    assert Path(cfg.experiment.output_dir).is_absolute()
    pod_specs = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]]
    pod_specs += [g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    for pod in pod_specs:
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
        assert any(cfg.experiment.output_dir.startswith(m + "/") for m in mounts), mounts

    # enough GPUs and CPUs in the worker group for the config's workers
    gpus = cpus = 0.0
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert "nvidia.com/gpu" in limits
        gpus += group["replicas"] * float(limits["nvidia.com/gpu"])
        cpus += group["replicas"] * float(limits["cpu"])
    assert gpus >= cfg.runtime.num_workers * cfg.runtime.num_gpus_per_worker
    assert cpus >= cfg.runtime.num_workers * cfg.runtime.num_cpus_per_worker


def test_rayjob_runtime_env():
    env = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    assert env["working_dir"]
    assert "/.venv" in env["excludes"]
    assert "torch" not in str(env.get("pip", "")) and "torch" not in str(env.get("conda", ""))
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_rayjob_keeps_the_dashboard_inside_the_cluster():
    docs = _rayjob_docs()
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert cluster["authOptions"]["mode"] == "token"
    assert not [d for d in docs if d["kind"] == "Ingress"]
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
    # every volume claim a pod uses is created by the manifest
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["containers"]:  # secrets are optional: pods start without them
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref.get("optional") is True, var["name"]


# --------------------------------------------------------------------------- job submission


def test_runtime_env_excludes_and_no_torch():
    env = _load(RUNTIME_ENV)
    assert "working_dir" not in env  # submit.sh passes --working-dir .
    assert "pip" not in env and "conda" not in env and "uv" not in env
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    # the patterns do what they say, with Ray's own matcher
    pathspec = pytest.importorskip("ray._private.thirdparty.pathspec")
    spec = pathspec.PathSpec.from_lines("gitwildmatch", env["excludes"])
    for excluded in (
        ".venv",
        ".venv/lib/x.py",
        ".git",
        "runs/q/metrics.jsonl",
        "sweeps",
        "wandb/run-1",
        "bench/results/core.json",
        "firm_ray/__pycache__/a.pyc",
    ):
        assert spec.match_file(excluded), excluded
    for kept in (
        "firm_ray/config/schema.py",
        "tune_configs/real_qwen_hh.yaml",
        "bench/core.py",
        "cluster/runtime_env.yaml",
        "pyproject.toml",
    ):
        assert not spec.match_file(kept), kept


def test_runtime_env_is_a_valid_ray_runtime_env():
    runtime_env = pytest.importorskip("ray.runtime_env")
    runtime_env.RuntimeEnv(**_load(RUNTIME_ENV), working_dir=str(REPO))


def test_submit_script_syntax_and_mode():
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True)
    assert SUBMIT.stat().st_mode & stat.S_IXUSR, "cluster/submit.sh must be executable"
    text = SUBMIT.read_text()
    assert "set -euo pipefail" in text and "RAY_AUTH_MODE" in text


def _submit(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run cluster/submit.sh with a stand-in `ray` that prints its working dir and arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "ray"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "cwd=$PWD" "$@"\n')
    fake.chmod(0o755)
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        **env,
    }
    return subprocess.run(
        ["bash", str(SUBMIT), *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_submit_builds_the_ray_job_command(tmp_path: Path):
    config = TUNE_CONFIGS / "real_qwen_hh.yaml"
    out = _submit(
        tmp_path,
        str(config),  # any path to a config inside the repository
        "--set",
        "federation.rounds=2",
        RAY_AUTH_TOKEN="test-token",
        FIRM_RAY_OUTPUT_DIR="/mnt/shared/runs",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"cwd={REPO}"
    assert lines[1:] == [
        "job",
        "submit",
        "--address",
        "http://127.0.0.1:8265",
        "--runtime-env",
        "cluster/runtime_env.yaml",
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "firm_ray",
        "run",
        "tune_configs/real_qwen_hh.yaml",
        "--set",
        "experiment.output_dir=/mnt/shared/runs",
        "--set",
        "federation.rounds=2",
    ]


def test_submit_address_resume_and_errors(tmp_path: Path):
    out = _submit(
        tmp_path,
        "--resume",
        "/mnt/shared/runs/a",
        RAY_AUTH_TOKEN="t",
        RAY_ADDRESS="http://10.0.0.1:8265",
    )
    assert out.returncode == 0, out.stderr
    assert "http://10.0.0.1:8265" in out.stdout.splitlines()
    assert out.stdout.splitlines()[-4:] == ["firm_ray", "run", "--resume", "/mnt/shared/runs/a"]

    assert _submit(tmp_path).returncode == 2  # usage
    assert _submit(tmp_path, "--help").returncode == 0
    missing = _submit(tmp_path, "tune_configs/nope.yaml", RAY_AUTH_TOKEN="t")
    assert missing.returncode == 2 and "not found" in missing.stderr
    outside = tmp_path / "x.yaml"
    outside.write_text("{}\n")
    assert "outside the repository" in _submit(tmp_path, str(outside), RAY_AUTH_TOKEN="t").stderr
    no_token = _submit(tmp_path, str(TUNE_CONFIGS / "quickstart.yaml"))
    assert no_token.returncode == 2 and "token" in no_token.stderr
