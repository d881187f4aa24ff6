"""Prompt sources: real files written to tmp_path, loaded through load_prompts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from firm_ray.config import PROMPT_FORMATS, ConfigError, DataConfig, config_from_dict
from firm_ray.data import (
    PROMPT_FORMATTERS,
    DataError,
    Prompt,
    PromptSplits,
    hh_first_human_turn,
    load_prompts,
)

CATEGORIES = {"howto": 16, "sad": 8, "provocative": 8}  # 32 prompts


def _records(with_category: bool = True) -> list[dict]:
    rows = []
    for cat, count in CATEGORIES.items():
        for i in range(count):
            row = {"prompt": f"{cat} prompt number {i}?"}
            if with_category:
                row["category"] = cat
            rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep load_dataset's Arrow cache inside tmp_path (read at call time by datasets)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()
    return datasets


def _write(kind: str, tmp_path: Path, rows: list[dict], datasets=None) -> tuple[str, str, int]:
    """Write rows in one format; returns (source, path, row number of the first record)."""
    if kind == "jsonl":
        return "jsonl", str(_write_jsonl(tmp_path / "prompts.jsonl", rows)), 1
    if kind == "csv":
        return "csv", str(_write_csv(tmp_path / "prompts.csv", rows)), 2
    if kind == "parquet":
        return "parquet", str(_write_parquet(tmp_path / "prompts.parquet", rows)), 1
    if kind == "hf_disk":
        path = tmp_path / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return "hf", str(path), 1
    if kind == "hf_json":
        return "hf", str(_write_jsonl(tmp_path / "data.jsonl", rows)), 1
    raise AssertionError(kind)


KINDS = ["jsonl", "csv", "parquet", "hf_disk", "hf_json"]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("with_category", [True, False], ids=["category", "no-category"])
@pytest.mark.parametrize("kind", KINDS)
def test_sources_load_every_record(kind, with_category, tmp_path, hf_cache):
    rows = _records(with_category)
    source, path, first_row = _write(kind, tmp_path, rows, hf_cache)
    cfg = DataConfig(source=source, path=path, category_field="category" if with_category else None)
    splits = load_prompts(cfg, seed=0)
    assert isinstance(splits, PromptSplits) and splits.duplicates == 0
    everything = splits.train + splits.eval
    assert sorted(p.text for p in everything) == sorted(r["prompt"] for r in rows)
    assert len(splits.eval) == round(0.1 * len(rows))
    expected = {
        r["prompt"]: (r.get("category"), f"{path}:{i + first_row}") for i, r in enumerate(rows)
    }
    for prompt in everything:
        assert isinstance(prompt, Prompt)
        assert (prompt.category, prompt.source) == expected[prompt.text]
    # train keeps source order
    rows_of = [int(p.source.rsplit(":", 1)[1]) for p in splits.train]
    assert rows_of == sorted(rows_of)


def test_integer_categories_become_strings(tmp_path):
    rows = [{"prompt": f"p{i}", "category": i % 3} for i in range(12)]
    path = _write_parquet(tmp_path / "ints.parquet", rows)
    splits = load_prompts(DataConfig(source="parquet", path=str(path)), seed=0)
    assert {p.category for p in splits.train + splits.eval} == {"0", "1", "2"}


def test_prompts_are_stripped(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"  p{i}\n"} for i in range(4)])
    splits = load_prompts(DataConfig(source="jsonl", path=str(path), category_field=None), 0)
    assert sorted(p.text for p in splits.train + splits.eval) == ["p0", "p1", "p2", "p3"]


def test_jsonl_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": "b"}\n{"prompt": "c"}\n')
    cfg = DataConfig(source="jsonl", path=str(path), category_field=None, eval_fraction=0.3)
    splits = load_prompts(cfg, 0)
    sources = {p.text: p.source for p in splits.train + splits.eval}
    assert sources == {"a": f"{path}:1", "b": f"{path}:4", "c": f"{path}:5"}


def test_hf_named_splits_from_a_data_directory(tmp_path, hf_cache):
    data = tmp_path / "hfdir"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", _records())
    test_rows = [{"prompt": f"held out {i}", "category": "sad"} for i in range(5)]
    test_rows.append({"prompt": "howto prompt number 0?", "category": "howto"})  # also in train
    _write_jsonl(data / "test.jsonl", test_rows)
    cfg = DataConfig(source="hf", path=str(data), split="train", eval_split="test")
    splits = load_prompts(cfg, 0)
    assert [p.text for p in splits.eval] == [r["prompt"] for r in test_rows]
    assert splits.eval[0].source == f"{data}[test]:1"
    assert len(splits.train) == 31 and splits.duplicates == 1
    assert not {p.text for p in splits.train} & {p.text for p in splits.eval}
    assert splits.train[0].source == f"{data}[train]:2"  # row 1 is also an eval prompt


def test_hf_dataset_dict_saved_to_disk(tmp_path, hf_cache):
    rows = _records()
    path = tmp_path / "dd"
    hf_cache.DatasetDict(
        {
            "train": hf_cache.Dataset.from_list(rows[:24]),
            "validation": hf_cache.Dataset.from_list(rows[24:]),
        }
    ).save_to_disk(str(path))
    cfg = DataConfig(source="hf", path=str(path), eval_split="validation")
    splits = load_prompts(cfg, 0)
    assert [p.text for p in splits.train] == [r["prompt"] for r in rows[:24]]
    assert [p.text for p in splits.eval] == [r["prompt"] for r in rows[24:]]
    with pytest.raises(DataError) as info:
        load_prompts(DataConfig(source="hf", path=str(path), split="dev"), 0)
    assert str(info.value) == (
        f"data.path {path} split 'dev': split 'dev' not found (splits: train, validation)"
    )


def test_hf_single_data_file_with_second_eval_file(tmp_path, hf_cache):
    train = _write_csv(tmp_path / "train.csv", _records())
    evalf = _write_csv(tmp_path / "eval.csv", [{"prompt": "an eval prompt", "category": "sad"}])
    splits = load_prompts(DataConfig(source="hf", path=str(train), eval_split=str(evalf)), 0)
    assert [(p.text, p.source) for p in splits.eval] == [("an eval prompt", f"{evalf}:1")]
    assert len(splits.train) == 32


def test_file_source_with_eval_file(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _records())
    eval_rows = [{"prompt": "sad prompt number 3?", "category": "sad"}] * 2
    eval_rows.append({"prompt": "brand new", "category": "howto"})
    evalf = _write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    cfg = DataConfig(source="jsonl", path=str(train), eval_split=str(evalf))
    splits = load_prompts(cfg, 0)
    assert [p.text for p in splits.eval] == ["sad prompt number 3?", "brand new"]
    assert [p.source for p in splits.eval] == [f"{evalf}:1", f"{evalf}:3"]
    assert "sad prompt number 3?" not in {p.text for p in splits.train}
    assert len(splits.train) == 31 and splits.duplicates == 2


def test_duplicates_keep_the_first_record(tmp_path):
    rows = [{"prompt": "same"}, {"prompt": "other"}, {"prompt": "same"}, {"prompt": "third"}]
    path = _write_jsonl(tmp_path / "dup.jsonl", rows)
    cfg = DataConfig(source="jsonl", path=str(path), category_field=None, eval_fraction=0.3)
    splits = load_prompts(cfg, 0)
    assert splits.duplicates == 1
    sources = {p.text: p.source for p in splits.train + splits.eval}
    assert sources == {"same": f"{path}:1", "other": f"{path}:2", "third": f"{path}:4"}


def test_partition_field_is_kept_as_extra(tmp_path):
    rows = [
        {"prompt": f"p{i}", "category": "a" if i % 2 else "b", "topic": i % 3} for i in range(9)
    ]
    path = _write_jsonl(tmp_path / "t.jsonl", rows)
    cfg = config_from_dict(
        {"data": {"source": "jsonl", "path": str(path), "partition": {"field": "topic"}}}
    ).data
    splits = load_prompts(cfg, 0)
    for prompt in splits.train + splits.eval:
        i = int(prompt.text[1:])
        assert prompt.extra == (("topic", str(i % 3)),)
        assert prompt.extra_value("topic") == str(i % 3) and prompt.extra_value("x") is None


# --------------------------------------------------------------------------- HH format

HH_ROWS = [
    "\n\nHuman: What are some cuss words in english?\n\nAssistant: Here's an incomplete list."
    "\n\nHuman: What's your favorite one?\n\nAssistant: I haven't even thought about it.",
    "\n\nHuman: How do I bake bread?\nI have flour.\n\nAssistant: Mix flour, water and yeast.",
    "Human: no leading blank line\n\nAssistant: fine",
    "\n\nHuman: only a question, no answer yet",
]


def test_hh_first_human_turn_function():
    assert hh_first_human_turn(HH_ROWS[0]) == "What are some cuss words in english?"
    assert hh_first_human_turn(HH_ROWS[1]) == "How do I bake bread?\nI have flour."
    assert hh_first_human_turn(HH_ROWS[2]) == "no leading blank line"
    assert hh_first_human_turn(HH_ROWS[3]) == "only a question, no answer yet"
    with pytest.raises(ValueError, match="no 'Human:' turn"):
        hh_first_human_turn("\n\nAssistant: hello")
    with pytest.raises(ValueError, match="empty first"):
        hh_first_human_turn("\n\nHuman:  \n\nAssistant: hi")


def test_hh_file_first_human_turn(tmp_path):
    rows = [{"chosen": t, "rejected": t + " no."} for t in HH_ROWS]
    rows.append(
        {"chosen": HH_ROWS[0].replace("favorite", "least favorite"), "rejected": "x"}
    )  # same first turn
    path = _write_jsonl(tmp_path / "hh.jsonl", rows)
    cfg = DataConfig(
        source="jsonl",
        path=str(path),
        prompt_field="chosen",
        category_field=None,
        prompt_format="hh_first_human_turn",
        eval_fraction=0.25,
    )
    splits = load_prompts(cfg, 0)
    texts = sorted(p.text for p in splits.train + splits.eval)
    assert texts == sorted(hh_first_human_turn(t) for t in HH_ROWS)
    assert splits.duplicates == 1 and len(splits.eval) == 1


def test_prompt_formatter_registry_matches_config():
    assert set(PROMPT_FORMATTERS) == set(PROMPT_FORMATS)
    assert PROMPT_FORMATTERS["plain"]("x y") == "x y"


# --------------------------------------------------------------------------- eval and caps


def _holdout_cfg(tmp_path, **kw) -> DataConfig:
    rows = [
        {"prompt": f"{cat} {i}", "category": cat}
        for cat, count in {"a": 40, "b": 40, "c": 20}.items()
        for i in range(count)
    ]
    path = _write_jsonl(tmp_path / "h.jsonl", rows)
    return DataConfig(source="jsonl", path=str(path), **kw)


def test_holdout_is_stratified_disjoint_and_seeded(tmp_path):
    cfg = _holdout_cfg(tmp_path, eval_fraction=0.25)
    splits = load_prompts(cfg, seed=3)
    assert len(splits.eval) == 25 and len(splits.train) == 75
    assert Counter(p.category for p in splits.eval) == {"a": 10, "b": 10, "c": 5}
    assert not {p.text for p in splits.train} & {p.text for p in splits.eval}
    assert load_prompts(cfg, seed=3) == splits
    other = load_prompts(cfg, seed=4)
    assert {p.text for p in other.eval} != {p.text for p in splits.eval}


def test_holdout_rounding_keeps_one_each_side(tmp_path):
    path = _write_jsonl(tmp_path / "two.jsonl", [{"prompt": "x"}, {"prompt": "y"}])
    cfg = DataConfig(source="jsonl", path=str(path), category_field=None, eval_fraction=0.01)
    splits = load_prompts(cfg, 0)
    assert (len(splits.train), len(splits.eval)) == (1, 1)


def test_max_prompts_caps_training_prompts_only(tmp_path):
    full = load_prompts(_holdout_cfg(tmp_path), seed=0)
    capped = load_prompts(_holdout_cfg(tmp_path, max_prompts=30), seed=0)
    assert capped.eval == full.eval
    assert len(capped.train) == 30 and set(capped.train) <= set(full.train)
    assert Counter(p.category for p in capped.train) == {"a": 12, "b": 12, "c": 6}
    assert capped == load_prompts(_holdout_cfg(tmp_path, max_prompts=30), seed=0)
    assert capped.train != load_prompts(_holdout_cfg(tmp_path, max_prompts=30), seed=1).train


def test_max_eval_prompts_shrinks_the_holdout(tmp_path):
    splits = load_prompts(_holdout_cfg(tmp_path, eval_fraction=0.5, max_eval_prompts=10), 0)
    assert len(splits.eval) == 10 and len(splits.train) == 90
    assert Counter(p.category for p in splits.eval) == {"a": 4, "b": 4, "c": 2}


def test_max_eval_prompts_subsamples_an_eval_file(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _records())
    evalf = _write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"e{i}"} for i in range(20)])
    cfg = DataConfig(
        source="jsonl",
        path=str(train),
        eval_split=str(evalf),
        category_field=None,
        max_eval_prompts=5,
    )
    splits = load_prompts(cfg, 0)
    assert len(splits.eval) == 5 and len(splits.train) == 32
    assert splits == load_prompts(cfg, 0)


# --------------------------------------------------------------------------- errors


def _error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as info:
        load_prompts(cfg, seed=0)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _jsonl_lines(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


GOOD = '{"prompt": "fine", "category": "a"}'
JSONL_ERRORS = {
    "missing field": (
        [GOOD, GOOD.replace("fine", "ok"), '{"text": "x", "label": 1}'],
        "row 3: missing field 'prompt' (fields: text, label)",
    ),
    "bad json": ([GOOD, '{"prompt": "x",'], "row 2: invalid JSON ("),
    "not an object": ([GOOD, '["prompt", "x"]'], "row 2: expected a JSON object, got a list"),
    "non-string prompt": (
        [GOOD, '{"prompt": 5, "category": "a"}'],
        "row 2: field 'prompt' must be a string, got an integer (5)",
    ),
    "empty prompt": (
        [GOOD, '{"prompt": "   ", "category": "a"}'],
        "row 2: field 'prompt' is empty",
    ),
    "missing category": (
        [GOOD, '{"prompt": "y"}'],
        "row 2: missing field 'category' (fields: prompt); set data.category_field: null",
    ),
    "null category": (
        [GOOD, '{"prompt": "y", "category": null}'],
        "row 2: field 'category' must be a string or an integer, got null",
    ),
    "float category": (
        [GOOD, '{"prompt": "y", "category": 1.5}'],
        "row 2: field 'category' must be a string or an integer, got a float (1.5)",
    ),
    "only blank lines": (["", "  "], ": no prompts (the source is empty)"),
}


@pytest.mark.parametrize("lines, expected", JSONL_ERRORS.values(), ids=list(JSONL_ERRORS))
def test_jsonl_errors_are_one_line_with_file_row_and_field(tmp_path, lines, expected):
    path = _jsonl_lines(tmp_path, lines)
    message = _error(DataConfig(source="jsonl", path=path))
    assert message.startswith(f"data.path {path}"), message
    assert expected in message, message


def test_hh_error_names_row_field_and_format(tmp_path):
    path = _jsonl_lines(
        tmp_path, ['{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}', '{"chosen": "x"}']
    )
    cfg = DataConfig(
        source="jsonl",
        path=path,
        prompt_field="chosen",
        category_field=None,
        prompt_format="hh_first_human_turn",
    )
    assert _error(cfg) == (
        f"data.path {path} row 2: field 'chosen' (prompt_format hh_first_human_turn) "
        "has no 'Human:' turn"
    )


def test_csv_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,category\nhello,a\n")
    assert _error(DataConfig(source="csv", path=str(path))) == (
        f"data.path {path} row 1: missing field 'prompt' (fields: text, category)"
    )
    path.write_text("prompt,category\nhello,a\nshort\n")
    assert _error(DataConfig(source="csv", path=str(path))) == (
        f"data.path {path} row 3: has 1 cells, the header (row 1) has 2"
    )
    path.write_text("prompt,category\nhello,a\n,b\n")
    assert _error(DataConfig(source="csv", path=str(path))) == (
        f"data.path {path} row 3: field 'prompt' is empty"
    )
    path.write_text("prompt,category\n")
    assert _error(DataConfig(source="csv", path=str(path))).endswith(
        "no prompts (the source is empty)"
    )


def test_parquet_errors(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", [{"text": "x", "category": "a"}])
    assert _error(DataConfig(source="parquet", path=str(path))) == (
        f"data.path {path} row 1: missing field 'prompt' (fields: text, category)"
    )
    path = _write_parquet(
        tmp_path / "q.parquet",
        [{"prompt": "x", "category": "a"}, {"prompt": None, "category": "a"}],
    )
    assert _error(DataConfig(source="parquet", path=str(path))) == (
        f"data.path {path} row 2: field 'prompt' must be a string, got null (None)"
    )
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("not parquet")
    assert _error(DataConfig(source="parquet", path=str(bogus))).startswith(
        f"data.path {bogus}: not a readable Parquet file ("
    )


def test_hf_errors(tmp_path, hf_cache):
    path = tmp_path / "saved"
    hf_cache.Dataset.from_list([{"question": "x"}]).save_to_disk(str(path))
    assert _error(DataConfig(source="hf", path=str(path), category_field=None)) == (
        f"data.path {path} row 1: missing field 'prompt' (fields: question)"
    )
    odd = tmp_path / "data.xml"
    odd.write_text("<x/>")
    assert _error(DataConfig(source="hf", path=str(odd))).startswith(
        f"data.path {odd}: unknown data file type '.xml'"
    )
    train = _write_jsonl(tmp_path / "train.jsonl", _records())
    missing = tmp_path / "nope.jsonl"
    cfg = DataConfig(source="hf", path=str(train), eval_split=str(missing))
    assert _error(cfg) == f"data.eval_split {missing}: not found"


@pytest.mark.parametrize("source", ["jsonl", "csv", "parquet"])
def test_missing_file(tmp_path, source):
    path = tmp_path / f"absent.{source}"
    assert _error(DataConfig(source=source, path=str(path))) == f"data.path {path}: file not found"


def test_missing_eval_file_names_eval_split(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _records())
    cfg = DataConfig(source="jsonl", path=str(train), eval_split=str(tmp_path / "e.jsonl"))
    assert _error(cfg) == f"data.eval_split {tmp_path / 'e.jsonl'}: file not found"


def test_eval_file_errors_name_eval_split(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _records())
    evalf = _write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "ok", "category": "a"}, {"x": 1}])
    cfg = DataConfig(source="jsonl", path=str(train), eval_split=str(evalf))
    assert _error(cfg).startswith(f"data.eval_split {evalf} row 2: missing field 'prompt'")


def test_holdout_needs_two_distinct_prompts(tmp_path):
    path = _write_jsonl(tmp_path / "one.jsonl", [{"prompt": "x"}, {"prompt": "x"}])
    message = _error(DataConfig(source="jsonl", path=str(path), category_field=None))
    assert message == (
        f"data.path {path}: 1 distinct prompt(s); need at least 2 to hold out an eval set "
        "(or set data.eval_split)"
    )


def test_builtin_rejects_eval_split():
    with pytest.raises(ConfigError, match=r"^data\.eval_split = 'test': must be null"):
        config_from_dict({"data": {"eval_split": "test"}})


# --------------------------------------------------------------------------- builtin, layering


def test_builtin_world_prompts():
    pytest.importorskip("firm_ray.data.world")
    splits = load_prompts(DataConfig(), seed=0)
    assert splits.train and splits.eval
    assert not {p.text for p in splits.train} & {p.text for p in splits.eval}
    assert all(isinstance(p, Prompt) and p.text for p in splits.train + splits.eval)
    assert load_prompts(DataConfig(), seed=0) == splits
    capped = load_prompts(DataConfig(max_prompts=10, max_eval_prompts=5), seed=0)
    assert len(capped.train) == min(10, len(splits.train))
    assert len(capped.eval) == min(5, len(splits.eval))


def test_importing_data_does_not_import_datasets_or_heavy_packages():
    code = (
        "import sys, firm_ray.data; "
        "heavy = {'datasets', 'ray', 'torch', 'transformers', 'wandb', 'deepspeed'}; "
        "bad = heavy & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
