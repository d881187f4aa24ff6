"""firm_ray.config: defaults, shipped YAMLs, round trips, overrides and one-line error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from firm_ray import __version__
from firm_ray.algorithms import resolve
from firm_ray.cli.main import main
from firm_ray.config import (
    AlgorithmConfig,
    ConfigError,
    FederationConfig,
    FirmConfig,
    config_from_dict,
    dump_config,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
TUNE_CONFIGS = REPO / "tune_configs"


def _experiment_yamls() -> list[Path]:
    """Every experiment YAML under tune_configs/ (not DeepSpeed configs, not sweep files)."""
    found = []
    for path in sorted(TUNE_CONFIGS.rglob("*.yaml")):
        if "deepspeed" in path.relative_to(TUNE_CONFIGS).parts[:-1]:
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "sweep" in data:
            continue
        found.append(path)
    return found


def _error(overrides: list[str] | None = None, data: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, overrides or [])
    return str(info.value)


def _roundtrip(cfg: FirmConfig, tmp_path: Path) -> FirmConfig:
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    return load_config(path)


# --------------------------------------------------------------------------- valid configs


def test_defaults_are_valid_and_documented():
    cfg = load_config(None)
    assert cfg == FirmConfig() == config_from_dict({})
    assert cfg.num_objectives == 2
    assert [r.name for r in cfg.rewards] == ["relevance", "harmlessness"]
    assert cfg.algorithm.name == "firm" and cfg.algorithm.beta_scale == "relative"
    assert cfg.model.name_or_path == "builtin:tiny-world"
    assert cfg.federation.clients_sampled_per_round == 4
    assert cfg.algorithm.preference_vector(cfg.num_objectives) == [0.5, 0.5]
    # every field carries a docstring (pydantic reads the attribute docstrings)
    for section in FirmConfig.model_fields:
        assert FirmConfig.model_fields[section].description, section
    assert AlgorithmConfig.model_fields["server_lr"].description
    assert resolve("firm").Options.model_fields["beta_scale"].description  # options too
    assert (
        "127.0.0.1"
        in FirmConfig.model_fields["runtime"].annotation.model_fields["dashboard"].description
    )


def test_shipped_configs_load():
    paths = _experiment_yamls()
    assert TUNE_CONFIGS / "quickstart.yaml" in paths
    for path in paths:
        cfg = load_config(path)
        assert isinstance(cfg, FirmConfig), path


def test_quickstart_contents():
    text = (TUNE_CONFIGS / "quickstart.yaml").read_text()
    assert text.splitlines()[0] == "# firm-ray run tune_configs/quickstart.yaml"
    assert "firm-ray check-config tune_configs/quickstart.yaml" in text
    cfg = load_config(TUNE_CONFIGS / "quickstart.yaml")
    assert cfg.model.name_or_path == "builtin:tiny-world" and cfg.data.source == "builtin"
    assert [r.type for r in cfg.rewards] == ["relevance", "harmlessness"]
    assert (cfg.algorithm.name, cfg.algorithm.beta, cfg.algorithm.beta_scale) == (
        "firm",
        1.0,
        "relative",
    )
    fed = cfg.federation
    assert (fed.num_clients, fed.clients_per_round, fed.rounds, fed.local_steps) == (8, 0.5, 5, 4)
    assert cfg.runtime.num_workers == 2
    assert (cfg.data.partition.scheme, cfg.data.partition.alpha) == ("dirichlet", 0.3)
    assert cfg.trainer.learning_rate == 5e-3
    # written out in full: every section and every field is present in the file
    raw = yaml.safe_load(text)
    assert list(raw) == list(FirmConfig.model_fields)
    for name, section in raw.items():
        if isinstance(section, dict):  # (the algorithm's options follow its common keys)
            order = list if name != "algorithm" else set
            assert order(section) == order(getattr(cfg, name).model_dump()), name


def test_roundtrip_defaults(tmp_path):
    cfg = FirmConfig()
    assert _roundtrip(cfg, tmp_path) == cfg
    assert list(yaml.safe_load(dump_config(cfg))) == list(FirmConfig.model_fields)


def test_roundtrip_non_defaults_and_overrides(tmp_path):
    cfg = load_config(
        TUNE_CONFIGS / "quickstart.yaml",
        [
            "experiment.name=run-1.b",
            "experiment.description='1e5'",
            "model.name_or_path='123'",
            "model.dtype=bfloat16",
            "lora.target_modules=[q_proj, v_proj]",
            "data.source=jsonl",
            "data.path=prompts.jsonl",
            "data.max_prompts=100",
            "rewards=[{name: a, type: sentiment}, {name: b, type: length, normalize: true},"
            " {name: c, type: python, kwargs: {fn: 'mod:f', xs: [1, 2.5e-3, null]}}]",
            "algorithm.preference=[0.2, 0.3, 0.5]",
            "algorithm.name=fmgda",
            "algorithm.mu=0.01",
            "trainer.learning_rate=1e-7",
            "trainer.max_grad_norm=null",
            "federation.num_clients=16",
            "federation.clients_per_round=0.25",
            "federation.min_clients=4",
            "tracking.wandb.tags=[a, 'true', '1.5e3', 'null']",
        ],
    )
    assert cfg.trainer.learning_rate == 1e-7 and cfg.trainer.max_grad_norm is None
    assert cfg.experiment.description == "1e5" and cfg.model.name_or_path == "123"
    assert cfg.tracking.wandb.tags == ["a", "true", "1.5e3", "null"]
    back = _roundtrip(cfg, tmp_path)
    assert back == cfg
    assert dump_config(back) == dump_config(cfg)
    saved = save_config(cfg, tmp_path / "nested" / "dir" / "config.yaml")
    assert load_config(saved) == cfg


def test_overrides_lists_strings_and_indices():
    cfg = load_config(
        None,
        [
            "algorithm.preference=[0.3,0.7]",
            "model.name_or_path=foo",
            "model.tokenizer=",
            "algorithm.beta=0.25",
            "federation.rounds=7",
            "rewards[1].normalize=true",
            "rewards[0].kwargs.model=org/rm-7b",
            "trainer.learning_rate=3e-4",
        ],
    )
    assert cfg.algorithm.preference == [0.3, 0.7]
    assert cfg.algorithm.preference_vector(2) == [0.3, 0.7]
    assert cfg.model.name_or_path == "foo"
    assert cfg.model.tokenizer is None
    assert cfg.algorithm.beta == 0.25 and isinstance(cfg.algorithm.beta, float)
    assert cfg.federation.rounds == 7
    assert cfg.rewards[1].normalize is True
    assert cfg.rewards[0].kwargs == {"model": "org/rm-7b"}
    assert cfg.trainer.learning_rate == 3e-4


def test_ints_accepted_for_floats_and_empty_sections_mean_defaults():
    cfg = config_from_dict({"algorithm": {"beta": 2}, "tracking": None})
    assert cfg.algorithm.beta == 2.0 and isinstance(cfg.algorithm.beta, float)
    assert cfg.tracking == FirmConfig().tracking


def test_input_dict_not_modified():
    data = {"algorithm": {"beta": 0.5}}
    config_from_dict(data, ["algorithm.beta=0.7", "federation.rounds=2"])
    assert data == {"algorithm": {"beta": 0.5}}


def test_federation_sampling_and_assignment():
    fed = FederationConfig(num_clients=5, clients_per_round=0.1)
    assert fed.clients_sampled_per_round == 1
    cfg = FirmConfig()
    cfg.algorithm.beta = 3  # validated assignment
    assert cfg.algorithm.beta == 3.0
    with pytest.raises(ConfigError, match=r"beta = -2: must be >= 0"):
        cfg.algorithm.beta = -2
    with pytest.raises(ConfigError, match=r"federation\.num_clients = 8"):
        cfg.algorithm = AlgorithmConfig(name="centralized")
    assert cfg.algorithm.name == "firm"  # a rejected assignment leaves the tree unchanged


# --------------------------------------------------------------------------- errors

ERROR_CASES = {
    "beta negative": (["algorithm.beta=-1.0"], "algorithm.beta = -1.0: must be >= 0"),
    "beta string": (["algorithm.beta=abc"], "algorithm.beta = 'abc': must be a number"),
    "preference length": (
        ["algorithm.preference=[0.2,0.3,0.5]"],
        "algorithm.preference = [0.2, 0.3, 0.5]: must be a probability vector "
        "(entries >= 0 summing to 1) of length 2 (one per reward)",
    ),
    "preference negative": (
        ["algorithm.preference=[-0.5,1.5]"],
        "algorithm.preference = [-0.5, 1.5]: must be a probability vector",
    ),
    "preference sum": (
        ["algorithm.preference=[0.2,0.2]"],
        "algorithm.preference = [0.2, 0.2]: must be a probability vector "
        "(entries >= 0 summing to 1) of length 2 (one per reward)",
    ),
    "num_clients zero": (["federation.num_clients=0"], "federation.num_clients = 0: must be >= 1"),
    "clients_per_round zero": (
        ["federation.clients_per_round=0"],
        "federation.clients_per_round = 0: must be in (0, 1]",
    ),
    "clients_per_round above one": (
        ["federation.clients_per_round=1.5"],
        "federation.clients_per_round = 1.5: must be in (0, 1]",
    ),
    "unknown override top": (["bogus=1"], "bogus: unknown key; allowed keys: experiment, model"),
    "unknown override nested": (
        ["algorithm.bogus=1"],
        "algorithm.bogus: unknown key; allowed keys: name, preference, mu, server_lr, beta,",
    ),
    "override typo": (["algorithm.bta=1"], "algorithm.bta: unknown key (did you mean 'beta'?)"),
    "reward type": (
        ["rewards[1].type=foo"],
        "rewards[1].type = 'foo': must be one of relevance, harmlessness, sentiment",
    ),
    "duplicate reward names": (
        ["rewards[1].name=relevance"],
        "rewards[1].name = 'relevance': duplicate reward name",
    ),
    "firm with one reward": (
        ["rewards=[{name: relevance, type: relevance}]"],
        "rewards = ['relevance']: algorithm 'firm' needs at least 2 rewards",
    ),
    "fmgda with one reward": (
        ["algorithm.name=fmgda", "rewards=[{name: r, type: relevance}]"],
        "rewards = ['r']: algorithm 'fmgda' needs at least 2 rewards",
    ),
    "no rewards": (["rewards=[]"], "rewards = []: must have at least 1 entry"),
    "deepspeed without config": (
        ["trainer.backend=deepspeed"],
        "trainer.deepspeed_config = None: required when trainer.backend is 'deepspeed'",
    ),
    "min_clients too large": (
        ["federation.min_clients=5"],
        "federation.min_clients = 5: must be <= clients sampled per round (4 = ",
    ),
    "centralized with 8 clients": (
        ["algorithm.name=centralized"],
        "federation.num_clients = 8: algorithm 'centralized' requires exactly 1 client",
    ),
    "bool for int": (
        ["trainer.batch_prompts=true"],
        "trainer.batch_prompts = True: must be an integer, not a boolean",
    ),
    "number for str": (
        ["model.name_or_path=123"],
        "model.name_or_path = 123: must be a string, not an integer",
    ),
    "bool for float": (["algorithm.mu=yes"], "algorithm.mu = True: must be a number"),
    "string for list": (
        ["tracking.wandb.tags=abc"],
        "tracking.wandb.tags = 'abc': must be a list, not a string",
    ),
    "unsafe run name": (["experiment.name=../x"], "experiment.name = '../x': must be a safe"),
    "bad literal": (["model.dtype=float64"], "model.dtype = 'float64': must be one of auto"),
    "infinite float": (["algorithm.beta=.inf"], "algorithm.beta = inf: must be a finite number"),
    "data path required": (["data.source=csv"], "data.path = None: required when data.source"),
    "group advantage needs samples": (
        ["trainer.generations_per_prompt=1"],
        "trainer.generations_per_prompt = 1: must be >= 2 when trainer.advantage is 'group'",
    ),
    "list item": (["algorithm.preference=[a, 1]"], "algorithm.preference[0] = 'a': must be"),
    "index out of range": (["rewards[5].name=x"], "rewards[5]: index out of range"),
    "malformed override": (["algorithm.beta"], "override 'algorithm.beta': must look like"),
    "section not a mapping": (["algorithm=5"], "algorithm = 5: must be a mapping"),
    "missing reward field": (["rewards[0]={name: x}"], "rewards[0].type: required field"),
}


@pytest.mark.parametrize("overrides, expected", ERROR_CASES.values(), ids=list(ERROR_CASES))
def test_error_is_one_line_with_path_and_value(overrides, expected):
    message = _error(overrides)
    assert "\n" not in message, message
    assert message.startswith(expected), message


def test_unknown_keys_in_data_top_level_and_nested():
    message = _error(data={"algorithm": {"bogus": 1}})
    assert message == (
        "algorithm.bogus: unknown key; allowed keys: "
        "name, preference, mu, server_lr, beta, beta_scale, grad_norm"
    )
    assert _error(data={"bogus": 1}).startswith("bogus: unknown key; allowed keys: experiment")
    rewards = [{"name": "a", "type": "relevance"}, {"name": "b", "type": "length", "weight": 2}]
    message = _error(data={"rewards": rewards})
    assert message == "rewards[1].weight: unknown key; allowed keys: name, type, normalize, kwargs"


def test_several_errors_one_line_each_unknown_keys_first():
    data = {"federation": {"num_clients": 0}, "algorithm": {"beta": -1, "bta": 1}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    lines = str(info.value).splitlines()
    assert lines == info.value.problems
    assert lines[0].startswith("algorithm.bta: unknown key (did you mean 'beta'?)")
    assert "algorithm.beta = -1: must be >= 0" in lines
    assert "federation.num_clients = 0: must be >= 1" in lines
    assert len(lines) == 3


class LionDefault(resolve("firm")):
    """A plug-in algorithm (loaded as 'test_config:LionDefault') whose default optimizer is
    not one firm_ray builds."""

    default_optimizer = "lion"


def test_momentum_with_the_algorithms_default_adamw_fails_at_load():
    """trainer.optimizer null resolves to the algorithm's default on the worker; momentum with
    a default of AdamW is refused when the config loads, naming the algorithm and its default."""
    assert _error(["trainer.momentum=0.9"]) == (
        "trainer.momentum = 0.9: only used with optimizer 'sgd'; trainer.optimizer is null "
        "and algorithm 'firm' defaults to 'adamw'"
    )
    message = _error(["algorithm.name=fedavg_ls", "trainer.momentum=0.5"])
    assert message.endswith("algorithm 'fedavg_ls' defaults to 'adamw'"), message
    assert _error(["trainer.optimizer=adamw", "trainer.momentum=0.9"]) == (
        "trainer.momentum = 0.9: only used with trainer.optimizer 'sgd'"
    )
    # fmgda defaults to SGD; an explicit SGD takes momentum with any algorithm
    assert config_from_dict({}, ["algorithm.name=fmgda", "trainer.momentum=0.9"])
    cfg = config_from_dict({}, ["trainer.optimizer=sgd", "trainer.momentum=0.9"])
    assert cfg.trainer.momentum == 0.9
    # a later assignment goes through the same check and leaves the tree unchanged
    cfg = FirmConfig()
    with pytest.raises(ConfigError, match="algorithm 'firm' defaults to 'adamw'"):
        cfg.trainer = cfg.trainer.model_copy(update={"momentum": 0.9})
    assert cfg.trainer.momentum == 0.0


def test_a_plugin_algorithms_unknown_default_optimizer_fails_at_load():
    assert _error(["algorithm.name=test_config:LionDefault"]) == (
        "trainer.optimizer = None: algorithm 'test_config:LionDefault' defaults to 'lion', "
        "which is not one of adamw, sgd; set trainer.optimizer"
    )
    name = "algorithm.name=test_config:LionDefault"
    assert config_from_dict({}, [name, "trainer.optimizer=sgd"]).trainer.optimizer == "sgd"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(path)


def test_bad_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("algorithm:\n  beta: [1, 2\nfederation: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid YAML at line ")


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(path)


def test_preference_vector_checks_length():
    assert AlgorithmConfig().preference_vector(4) == [0.25] * 4
    with pytest.raises(ConfigError, match=r"algorithm\.preference"):
        AlgorithmConfig(preference=[0.5, 0.5]).preference_vector(3)


def test_overrides_must_be_a_sequence_of_strings():
    with pytest.raises(TypeError):
        config_from_dict({}, "algorithm.beta=0.5")


# --------------------------------------------------------------------------- CLI


def test_cli_check_config(capsys):
    path = str(TUNE_CONFIGS / "quickstart.yaml")
    assert main(["check-config", path, "--set", "algorithm.beta=0.5"]) == 0
    out = capsys.readouterr().out
    assert "beta: 0.5" in out
    assert yaml.safe_load(out)["algorithm"]["beta"] == 0.5


def test_cli_check_config_error(capsys):
    path = str(TUNE_CONFIGS / "quickstart.yaml")
    assert main(["check-config", path, "--set", "algorithm.beta=-1"]) == 2
    out = capsys.readouterr().out
    assert out == "error: algorithm.beta = -1: must be >= 0\n"


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out
