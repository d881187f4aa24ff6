"""firm_ray.sweep_spec: shipped sweep files, search-space forms, expansion and one-line errors."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from firm_ray.config import ConfigError, FirmConfig
from firm_ray.sweep_spec import Sweep, load_sweep, simplex_grid, sweep_from_dict

REPO = Path(__file__).resolve().parents[2]
TUNE_CONFIGS = REPO / "tune_configs"

SHIPPED_TRIALS = {"sweep_preferences.yaml": 10, "sweep_beta.yaml": 10, "baselines.yaml": 15}

BASE_YAML = """\
experiment:
  name: base
  seed: 3
federation:
  num_clients: 8
  rounds: 5
"""

THREE_REWARDS = """\
rewards:
  - {name: relevance, type: relevance}
  - {name: harmlessness, type: harmlessness}
  - {name: sentiment, type: sentiment}
"""


def _sweep_files() -> list[Path]:
    """Every YAML under tune_configs/ whose top-level key is ``sweep``."""
    found = []
    for path in sorted(TUNE_CONFIGS.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "sweep" in data:
            found.append(path)
    return found


def _grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every params dict of the grid: variants x each axis's values (bounds for random forms)."""
    names = list(sweep.spec.variants) if sweep.spec.variants else [None]
    choices = [a.values if a.values else [a.low, a.high] for a in sweep.axes]
    points = []
    for name, combo in itertools.product(names, itertools.product(*choices)):
        params: dict[str, Any] = {a.key: v for a, v in zip(sweep.axes, combo, strict=True)}
        if name is not None:
            params["variant"] = name
        points.append(params)
    return points


def _make(
    tmp_path: Path,
    space: dict[str, Any] | None = None,
    variants: dict[str, list[str]] | None = None,
    base_text: str = BASE_YAML,
    **spec: Any,
) -> Sweep:
    """A sweep over a base config written to tmp_path (``base`` relative to the sweep file)."""
    (tmp_path / "base.yaml").write_text(base_text)
    body: dict[str, Any] = {"name": "s", "base": "base.yaml", **spec}
    if space is not None:
        body["space"] = space
    if variants is not None:
        body["variants"] = variants
    return sweep_from_dict({"sweep": body}, source=tmp_path / "sweep.yaml")


def _error(tmp_path: Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        _make(tmp_path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg  # one line
    return msg


# --------------------------------------------------------------------------- shipped files


def test_shipped_sweep_files_are_found():
    names = {p.name for p in _sweep_files()}
    assert set(SHIPPED_TRIALS) <= names
    assert "quickstart.yaml" not in names


@pytest.mark.parametrize("path", _sweep_files(), ids=lambda p: p.name)
def test_shipped_sweep_file_loads_and_every_trial_validates(path):
    lines = path.read_text().splitlines()
    assert lines[0] == f"# firm-ray sweep tune_configs/{path.relative_to(TUNE_CONFIGS)}"
    sweep = load_sweep(path)
    assert sweep.source == path
    n = sweep.num_trials()
    if path.name in SHIPPED_TRIALS:
        assert n == SHIPPED_TRIALS[path.name]
    # the header comment documents the trial count
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert re.search(rf"\b{n} trials\b", header), (path.name, n)
    points = _grid_points(sweep)
    assert len(points) * sweep.spec.num_samples == n
    for params in points:
        cfg = sweep.trial_config(params)
        assert isinstance(cfg, FirmConfig)
        assert cfg.runtime.num_workers == 1  # from sweep.set: trials run side by side
        for axis in sweep.axes:
            got = cfg.model_dump(mode="json")
            for part in axis.key.split("."):
                got = got[part]
            assert got == params[axis.key], (axis.key, params)


def test_sweep_preferences_contents():
    sweep = load_sweep(TUNE_CONFIGS / "sweep_preferences.yaml")
    assert list(sweep.spec.variants) == ["firm", "fedavg_ls"]
    (axis,) = sweep.axes
    assert (axis.key, axis.form) == ("algorithm.preference", "simplex")
    assert axis.values == [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]]
    cfg = sweep.trial_config({"variant": "fedavg_ls", "algorithm.preference": [0.25, 0.75]})
    assert cfg.algorithm.name == "fedavg_ls" and cfg.algorithm.preference == [0.25, 0.75]
    assert cfg.experiment.description == "preference sweep"
    cfg = sweep.trial_config({"variant": "firm", "algorithm.preference": [1.0, 0.0]})
    assert (cfg.algorithm.name, cfg.algorithm.beta) == ("firm", 1.0)


def test_sweep_beta_contents():
    sweep = load_sweep(TUNE_CONFIGS / "sweep_beta.yaml")
    assert sweep.spec.variants is None
    beta, seed = sweep.axes
    assert (beta.key, beta.form, beta.values) == (
        "algorithm.beta",
        "log_grid",
        [0, 0.01, 0.1, 1, 10],
    )
    assert (seed.key, seed.form, seed.values) == ("experiment.seed", "grid", [0, 1])
    assert sweep.base_config.algorithm.name == "firm"  # from sweep.set
    cfg = sweep.trial_config({"algorithm.beta": 0.0, "experiment.seed": 1})
    assert (cfg.algorithm.beta, cfg.experiment.seed) == (0.0, 1)


def test_baselines_contents():
    sweep = load_sweep(TUNE_CONFIGS / "baselines.yaml")
    assert list(sweep.spec.variants) == ["firm", "firm_beta0", "fedavg_ls", "fmgda", "centralized"]
    cfgs = {
        v: sweep.trial_config({"variant": v, "experiment.seed": 2}) for v in sweep.spec.variants
    }
    assert {v: c.algorithm.name for v, c in cfgs.items()} == {
        "firm": "firm",
        "firm_beta0": "firm",
        "fedavg_ls": "fedavg_ls",
        "fmgda": "fmgda",
        "centralized": "centralized",
    }
    assert cfgs["firm"].algorithm.beta == 1.0 and cfgs["firm_beta0"].algorithm.beta == 0.0
    central = cfgs["centralized"].federation
    assert (central.num_clients, central.clients_per_round) == (1, 1.0)
    assert cfgs["firm"].federation.num_clients == 8  # the base's, untouched by another variant
    assert all(c.experiment.seed == 2 for c in cfgs.values())


# --------------------------------------------------------------------------- search-space forms


def test_simplex_grid_two_objectives():
    assert simplex_grid(2, 5) == [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]]
    assert simplex_grid(2, 2) == [[0, 1], [1, 0]]


def test_simplex_grid_three_objectives():
    grid = simplex_grid(3, 3)
    assert grid == [
        [0, 0, 1],
        [0, 0.5, 0.5],
        [0, 1, 0],
        [0.5, 0, 0.5],
        [0.5, 0.5, 0],
        [1, 0, 0],
    ]
    assert grid == sorted(grid)
    for vec in [*grid, *simplex_grid(3, 4), *simplex_grid(4, 7)]:
        assert abs(sum(vec) - 1) < 1e-9 and min(vec) >= 0
    assert len(simplex_grid(3, 4)) == 10  # C(3 + 2, 2)


@pytest.mark.parametrize("points", [1, 0, -3])
def test_simplex_grid_needs_two_points(points):
    with pytest.raises(ValueError, match="points must be >= 2"):
        simplex_grid(2, points)


def test_simplex_axis_uses_the_base_number_of_rewards(tmp_path):
    sweep = _make(
        tmp_path, {"algorithm.preference": {"simplex": {"points": 3}}}, base_text=THREE_REWARDS
    )
    assert sweep.axes[0].values == simplex_grid(3, 3)
    assert sweep.num_trials() == 6


def test_log_grid_values(tmp_path):
    sweep = _make(
        tmp_path,
        {
            "algorithm.beta": {"log_grid": {"low": 0.01, "high": 10, "num": 4, "zero": True}},
            "algorithm.mu": {"log_grid": {"low": 0.001, "high": 0.1, "num": 3}},
            "algorithm.server_lr": {"log_grid": {"low": 0.5, "high": 0.5, "num": 1}},
        },
    )
    beta, mu, lr = sweep.axes
    assert beta.form == "log_grid" and beta.values == [0, 0.01, 0.1, 1, 10]
    assert mu.values == [0.001, 0.01, 0.1]  # no zero unless asked for
    assert lr.values == [0.5]
    assert sweep.num_trials() == 5 * 3 * 1


def test_dirichlet_is_seeded_and_sums_to_one(tmp_path):
    def draw(**arg: Any) -> list[list[float]]:
        space = {"algorithm.preference": {"dirichlet": arg}}
        return _make(tmp_path, space, base_text=THREE_REWARDS).axes[0].values

    first = draw(alpha=0.5, samples=6, seed=1)
    assert draw(alpha=0.5, samples=6, seed=1) == first
    assert draw(alpha=0.5, samples=6, seed=2) != first
    assert draw(alpha=0.5, samples=6) == draw(alpha=0.5, samples=6, seed=0)  # seed defaults to 0
    assert len(first) == 6
    for vec in first:
        assert len(vec) == 3 and min(vec) >= 0 and abs(sum(vec) - 1) < 1e-9
    # the vectors are the seeded Dirichlet draws (rounded to 4 places)
    expected = np.random.default_rng(1).dirichlet([0.5] * 3, size=6)
    np.testing.assert_allclose(np.array(first), expected, atol=2e-4)


def test_dirichlet_small_alpha_many_rewards_never_negative(tmp_path):
    # Regression: the last entry took the rounding remainder and could reach -0.0001 (this seed),
    # which then failed the sweep's own validation ("has a negative entry").
    rewards = ["relevance", "harmlessness", "sentiment", "length"]
    base = "rewards:\n" + "".join(f"  - {{name: {r}, type: {r}}}\n" for r in rewards)
    space = {"algorithm.preference": {"dirichlet": {"alpha": 0.1, "samples": 20, "seed": 6}}}
    values = _make(tmp_path, space, base_text=base).axes[0].values
    assert len(values) == 20
    for vec in values:
        assert len(vec) == 4 and min(vec) >= 0 and abs(sum(vec) - 1) < 1e-9


def test_random_forms_give_bounds_and_values(tmp_path):
    sweep = _make(
        tmp_path,
        {
            "algorithm.beta": {"uniform": [0, 2]},
            "trainer.learning_rate": {"loguniform": [1e-4, 1e-2]},
            "algorithm.grad_norm": {"choice": ["none", "l2"]},
            "experiment.seed": {"grid": [0, 1, 2]},
        },
        num_samples=4,
    )
    uni, logu, choice, grid = sweep.axes
    assert (uni.key, uni.form, uni.low, uni.high, uni.values) == (
        "algorithm.beta",
        "uniform",
        0.0,
        2.0,
        [],
    )
    assert (logu.form, logu.low, logu.high) == ("loguniform", 1e-4, 1e-2)
    assert (choice.form, choice.values, choice.low) == ("choice", ["none", "l2"], None)
    assert (grid.form, grid.values) == ("grid", [0, 1, 2])
    assert sweep.num_trials() == 3 * 4  # random forms add samples, not grid points


@pytest.mark.parametrize(
    ("entry", "where", "rule"),
    [
        ({"uniform": [1, 1]}, "sweep.space.algorithm.beta.uniform", "low < high"),
        ({"uniform": [2, 1]}, "sweep.space.algorithm.beta.uniform", "low < high"),
        ({"loguniform": [0, 1]}, "sweep.space.algorithm.beta.loguniform", "0 < low < high"),
        ({"loguniform": [-1, 1]}, "sweep.space.algorithm.beta.loguniform", "0 < low < high"),
        ({"loguniform": [1, 0.5]}, "sweep.space.algorithm.beta.loguniform", "0 < low < high"),
        ({"uniform": [0]}, "sweep.space.algorithm.beta.uniform", "must be [low, high]"),
        ({"uniform": [0, "x"]}, "sweep.space.algorithm.beta.uniform", "must be a finite number"),
        ({"uniform": [0, True]}, "sweep.space.algorithm.beta.uniform", "must be a finite number"),
        ({"grid": []}, "sweep.space.algorithm.beta.grid", "non-empty list"),
        ({"choice": 3}, "sweep.space.algorithm.beta.choice", "non-empty list"),
        ({"log_grid": {"low": 0, "high": 1}}, "sweep.space.algorithm.beta.log_grid", "0 < low"),
        ({"log_grid": {"low": 2, "high": 1}}, "sweep.space.algorithm.beta.log_grid", "<= high"),
        (
            {"log_grid": {"low": 1, "high": 2, "nmu": 3}},
            "sweep.space.algorithm.beta.log_grid",
            "unknown key(s) ['nmu']",
        ),
        ({"log_grid": [1, 2]}, "sweep.space.algorithm.beta.log_grid", "must be a mapping"),
    ],
)
def test_bad_form_arguments(tmp_path, entry, where, rule):
    msg = _error(tmp_path, space={"algorithm.beta": entry})
    assert msg.startswith(where), msg
    assert rule in msg, msg


def test_bad_simplex_and_dirichlet_arguments(tmp_path):
    msg = _error(tmp_path, space={"algorithm.preference": {"simplex": {"points": 1}}})
    assert msg == "sweep.space.algorithm.preference.simplex.points = 1: must be an integer >= 2"
    msg = _error(
        tmp_path, space={"algorithm.preference": {"dirichlet": {"alpha": 0, "samples": 2}}}
    )
    assert msg.startswith("sweep.space.algorithm.preference.dirichlet = ") and "alpha > 0" in msg
    msg = _error(tmp_path, space={"algorithm.preference": {"dirichlet": {"alpha": 1}}})
    assert "integer samples >= 1" in msg


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("entry", [{"gird": [1, 2]}, {}, {"grid": [1], "choice": [2]}])
def test_space_entry_needs_exactly_one_known_form(tmp_path, entry):
    msg = _error(tmp_path, space={"algorithm.beta": entry})
    assert msg.startswith(f"sweep.space.algorithm.beta = {entry!r}: ")
    assert "exactly one of grid, choice, uniform, loguniform, log_grid, simplex, dirichlet" in msg


def test_unknown_top_level_key(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE_YAML)
    data = {"sweep": {"name": "s", "base": "base.yaml", "variants": {"a": []}}, "extra": 1}
    with pytest.raises(ConfigError) as info:
        sweep_from_dict(data, source=tmp_path / "s.yaml")
    where = tmp_path / "s.yaml"
    assert str(info.value) == (
        f"{where}: must have exactly one top-level key 'sweep', got ['extra', 'sweep']"
    )
    with pytest.raises(ConfigError, match="got list"):
        sweep_from_dict([1], source=None)


def test_unknown_key_inside_sweep_has_a_hint(tmp_path):
    msg = _error(tmp_path, spcae={"algorithm.beta": {"grid": [1]}})
    assert msg.startswith("sweep.spcae: unknown key (did you mean 'space'?); allowed keys: name,")


def test_pydantic_errors_name_the_sweep_field(tmp_path):
    msg = _error(tmp_path, variants={"a": []}, num_samples=0)
    assert msg == "sweep.num_samples = 0: must be >= 1"
    msg = _error(tmp_path, variants={"a": []}, scheduler="hyperband")
    assert msg == "sweep.scheduler = 'hyperband': must be one of fifo, asha"
    msg = _error(tmp_path, variants={"a/b": []})
    assert msg.startswith("sweep.variants.a/b (key) = 'a/b': must be a safe directory name"), msg


def test_sweep_needs_space_or_variants(tmp_path):
    msg = _error(tmp_path)
    assert msg.startswith("sweep = {'name': 's', 'base': 'base.yaml'}: "), msg
    assert msg.endswith("a sweep needs a space or variants (otherwise it is one run)")
    msg = _error(tmp_path, space={}, variants={})
    assert "a sweep needs a space or variants" in msg


def test_sweep_section_must_be_a_mapping():
    with pytest.raises(ConfigError) as info:
        sweep_from_dict({"sweep": None})
    assert str(info.value) == "sweep = None: must be a mapping (a YAML section), not null"


def test_swept_field_must_exist(tmp_path):
    msg = _error(tmp_path, space={"algorithm.betta": {"grid": [0.1, 1]}})
    assert msg.startswith("sweep.space.algorithm.betta = 0.1: algorithm.betta: unknown key"), msg
    assert "(did you mean 'beta'?)" in msg


def test_preference_of_wrong_length_in_a_grid(tmp_path):
    msg = _error(tmp_path, space={"algorithm.preference": {"grid": [[0.5, 0.5], [0.2, 0.3, 0.5]]}})
    assert msg.startswith("sweep.space.algorithm.preference = [0.2, 0.3, 0.5]: "), msg
    assert "of length 2 (one per reward); got 3 entries" in msg


def test_random_bounds_are_validated_against_the_config(tmp_path):
    msg = _error(tmp_path, space={"algorithm.beta": {"uniform": [-1, 1]}})
    assert msg == "sweep.space.algorithm.beta = -1.0: algorithm.beta = -1.0: must be >= 0"
    msg = _error(tmp_path, space={"algorithm.grad_norm": {"choice": ["none", "l3"]}})
    assert msg.startswith("sweep.space.algorithm.grad_norm = 'l3': "), msg


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("runtime.num_workers", [1, 2]),
        ("runtime.num_gpus_per_worker", [0.0, 0.5]),
        ("experiment.name", ["a", "b"]),
        ("experiment.output_dir", ["x"]),
        ("runtime", [{"num_workers": 4}]),  # a whole section holding forbidden fields
        ("experiment", [{"name": "x", "seed": 1}]),
    ],
)
def test_placement_and_run_directory_cannot_be_swept(tmp_path, key, values):
    msg = _error(tmp_path, space={key: {"grid": values}})
    assert msg.startswith(f"sweep.space.{key}: cannot be swept"), msg


def test_experiment_fields_besides_name_and_output_dir_can_be_swept(tmp_path):
    sweep = _make(
        tmp_path, {"experiment.seed": {"grid": [0, 1]}, "experiment.description": {"grid": ["a"]}}
    )
    assert sweep.num_trials() == 2


@pytest.mark.parametrize(
    "override",
    [
        "runtime.num_workers=1",
        "runtime.address=auto",
        "experiment.name=other",
        "experiment.output_dir=elsewhere",
        "runtime={num_workers: 1}",
        " runtime.dashboard = true",
    ],
)
def test_variant_cannot_override_runtime_or_run_directory(tmp_path, override):
    msg = _error(tmp_path, variants={"ok": ["algorithm.beta=0.5"], "bad": [override]})
    assert msg == "sweep.variants.bad: cannot override runtime.* or the run directory per trial"


def test_variant_with_invalid_value_is_named(tmp_path):
    msg = _error(tmp_path, variants={"good": ["algorithm.beta=2"], "neg": ["algorithm.beta=-1"]})
    assert msg == "sweep.variants.neg: algorithm.beta = -1: must be >= 0"
    msg = _error(tmp_path, variants={"central": ["algorithm.name=centralized"]})
    assert msg.startswith("sweep.variants.central: federation.num_clients = 8: "), msg


def test_grid_value_invalid_for_one_variant_names_it(tmp_path):
    msg = _error(
        tmp_path,
        space={"federation.min_clients": {"grid": [1, 4]}},
        variants={"big": ["federation.num_clients=8"], "small": ["federation.num_clients=2"]},
    )
    assert msg.startswith("sweep.space.federation.min_clients = 4 (variant small): "), msg
    assert "federation.min_clients = 4: must be <= clients sampled per round" in msg


def test_missing_base_file(tmp_path):
    sweep = {"sweep": {"name": "s", "base": "nope.yaml", "variants": {"a": []}}}
    with pytest.raises(ConfigError) as info:
        sweep_from_dict(sweep, source=tmp_path / "sweep.yaml")
    assert (
        str(info.value) == f"sweep.base nope.yaml: {tmp_path / 'nope.yaml'}: config file not found"
    )


def test_bad_sweep_set_is_reported_with_the_base(tmp_path):
    msg = _error(tmp_path, variants={"a": []}, set=["federation.rouns=4"])
    assert msg.startswith("sweep.base base.yaml: federation.rouns: unknown key (did you mean"), msg


def test_missing_and_invalid_sweep_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: sweep file not found$"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_sweep(bad)


# --------------------------------------------------------------------------- trials


def test_trial_overrides_order_and_extra(tmp_path):
    sweep = _make(
        tmp_path,
        {
            "experiment.seed": {"grid": [0, 1]},
            "algorithm.beta": {"grid": [0.1, 3]},
            "algorithm.preference": {"simplex": {"points": 3}},
        },
        variants={"ls": ["algorithm.beta_scale=absolute", "algorithm.beta=0.5"], "firm": []},
    )
    assert sweep.num_trials() == 2 * 2 * 3 * 2
    params = {
        "variant": "ls",
        "experiment.seed": 1,
        "algorithm.beta": 3,
        "algorithm.preference": [0.5, 0.5],
    }
    assert sweep.trial_overrides(params) == [
        "algorithm.beta_scale=absolute",
        "algorithm.beta=0.5",
        "experiment.seed=1",
        "algorithm.beta=3",
        "algorithm.preference=[0.5, 0.5]",
    ]
    cfg = sweep.trial_config(params)
    assert cfg.algorithm.beta_scale == "absolute"
    assert cfg.algorithm.beta == 3.0  # the swept value comes after the variant's
    assert (cfg.experiment.seed, cfg.algorithm.preference) == (1, [0.5, 0.5])
    assert cfg.experiment.name == "base"
    cfg = sweep.trial_config(params, extra=["algorithm.beta=7", "experiment.name=trial_0001"])
    assert (cfg.algorithm.beta, cfg.experiment.name) == (7.0, "trial_0001")  # extra comes last
    firm = sweep.trial_config({**params, "variant": "firm"})
    assert (firm.algorithm.beta_scale, firm.algorithm.beta) == ("relative", 3.0)
    with pytest.raises(ConfigError, match=r"algorithm\.beta = -1"):
        sweep.trial_config(params, extra=["algorithm.beta=-1"])


def test_trial_overrides_without_variants_and_string_values(tmp_path):
    sweep = _make(tmp_path, {"algorithm.name": {"grid": ["fmgda", "firm"]}})
    assert sweep.trial_overrides({"algorithm.name": "fmgda"}) == ['algorithm.name="fmgda"']
    assert sweep.trial_config({"algorithm.name": "fmgda"}).algorithm.name == "fmgda"


def test_sweep_set_is_applied_to_the_base(tmp_path):
    sweep = _make(
        tmp_path,
        variants={"a": [], "b": ["algorithm.beta=2"]},
        set=["federation.rounds=4", "runtime.num_workers=1", "algorithm.beta=0.25"],
    )
    assert sweep.spec.set == ["federation.rounds=4", "runtime.num_workers=1", "algorithm.beta=0.25"]
    assert sweep.base["federation"]["rounds"] == 4
    assert sweep.base_config.runtime.num_workers == 1
    assert sweep.base_config.experiment.seed == 3  # the rest of the base file is kept
    a, b = sweep.trial_config({"variant": "a"}), sweep.trial_config({"variant": "b"})
    assert (a.federation.rounds, a.algorithm.beta) == (4, 0.25)
    assert (b.federation.rounds, b.algorithm.beta) == (4, 2.0)  # variants come after set


def test_base_is_relative_to_the_sweep_file(tmp_path, monkeypatch):
    configs, elsewhere = tmp_path / "configs", tmp_path / "elsewhere"
    configs.mkdir()
    elsewhere.mkdir()
    (configs / "base.yaml").write_text(BASE_YAML)
    # a decoy with the same name in the working directory must not be picked up
    (elsewhere / "base.yaml").write_text("experiment:\n  seed: 99\n")
    (configs / "my_sweep.yaml").write_text(
        "# firm-ray sweep my_sweep.yaml\n"
        "sweep:\n"
        "  name: rel\n"
        "  base: base.yaml\n"
        "  space:\n"
        "    algorithm.beta: {grid: [0.5, 1e-2]}\n"
    )
    monkeypatch.chdir(elsewhere)
    sweep = load_sweep(Path("..") / "configs" / "my_sweep.yaml")
    assert sweep.base_config.experiment.seed == 3
    assert sweep.base_config.experiment.name == "base"
    assert sweep.axes[0].values == [0.5, 0.01]  # 1e-2 is read as a float
    assert sweep.num_trials() == 2
    # an absolute base is used as is
    absolute = {"name": "abs", "base": str(elsewhere / "base.yaml"), "variants": {"a": []}}
    sweep = sweep_from_dict({"sweep": absolute}, source=configs / "x.yaml")
    assert sweep.base_config.experiment.seed == 99
