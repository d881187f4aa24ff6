"""Prompt sources: the built-in world, local JSONL/CSV/Parquet files and Hugging Face datasets.

Why one loader: every experiment, from the laptop default to a cluster run on Anthropic HH or
PKU-SafeRLHF, needs the same two things: training prompts (later partitioned over clients) and a
fixed held-out eval set. `load_prompts` turns a `DataConfig` into exactly that, deterministically
for a given seed, and fails *before* any worker starts with one line naming the file, the row and
the field when a record is unusable::

    data.path prompts.jsonl row 7: missing field 'prompt' (fields: text, label)

Sources (``data.source``):

- ``builtin``: `firm_ray.data.world.world_prompts(seed, eval_fraction)`: a stratified hold-out.
- ``jsonl`` / ``csv`` / ``parquet``: a local file. ``row`` in messages is the 1-based line number
  for JSONL (blank lines are skipped but counted, so it matches an editor), the line on which the
  record ends for CSV (the header is row 1, so the first record is row 2, as in a spreadsheet),
  and the 1-based record index for Parquet and HF.
- ``hf``: ``data.path`` is tried, in this order, as a `save_to_disk` directory of a DatasetDict
  (``dataset_dict.json``: ``data.split`` selects the split) or of a single Dataset
  (``state.json``), as a single local data file loaded with the packaged builder its extension
  names (.json/.jsonl -> json, .csv, .parquet, .txt -> text, .arrow), else it goes to
  `datasets.load_dataset(path, split=...)` (a hub id, or a local dataset directory/script).

Fields: ``data.prompt_field`` holds the prompt, ``data.category_field`` (None = no categories)
the category; a category must be a non-empty string or an integer (HF ClassLabel ids) and is
stored as a string. A configured category field that a record lacks is an error (set
``data.category_field: null`` for data without categories). ``data.prompt_format`` maps the
prompt field to the prompt through `PROMPT_FORMATTERS`; prompts are stripped of surrounding
whitespace.

Eval set: with ``data.eval_split`` set, a second split (HF sources with named splits) or a second
file of the same kind (file sources, HF data files and saved single Datasets, which have no split
names). Otherwise ``round(eval_fraction * n)`` prompts (at least 1, at most n - 1, at most
``max_eval_prompts``) are held out, stratified by category with a seeded generator.

Duplicates: identical prompt texts are dropped, keeping the first occurrence, and a training
prompt whose text is in the eval set is dropped, so train and eval never share a text (a model
must not be evaluated on what it trained on). `PromptSplits.duplicates` counts what was dropped.

Caps: ``max_prompts`` / ``max_eval_prompts`` keep a seeded, category-stratified subset, in source
order. Every random choice uses its own generator seeded from (seed, purpose), so changing one cap
does not reshuffle the hold-out.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firm_ray.config import DataConfig
from firm_ray.data.prompts import Prompt

__all__ = [
    "PROMPT_FORMATTERS",
    "DataError",
    "PromptSplits",
    "check_first_rows",
    "hh_first_human_turn",
    "load_prompts",
    "seeded_rng",
]


class DataError(ValueError):
    """Unusable data; ``str(err)`` is one line naming the file, the row and the field."""


@dataclass(frozen=True)
class PromptSplits:
    """Training prompts (to be partitioned over clients) and the held-out eval prompts."""

    train: list[Prompt]
    eval: list[Prompt]
    duplicates: int = 0
    """Records dropped because their text repeated an earlier prompt or an eval prompt."""


# --------------------------------------------------------------------------- prompt formats

_HH_TURN = re.compile(r"(?:^|\n\n)Human:(.*?)(?=\n\nAssistant:|\n\nHuman:|\Z)", re.DOTALL)


def hh_first_human_turn(transcript: str) -> str:
    """The first human turn of an Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...").

    Raises ValueError (with the reason only; the loader adds file, row and field) when the text
    has no non-empty ``Human:`` turn.
    """
    match = _HH_TURN.search(transcript)
    if match is None:
        raise ValueError("has no 'Human:' turn")
    turn = match.group(1).strip()
    if not turn:
        raise ValueError("has an empty first 'Human:' turn")
    return turn


def _plain(text: str) -> str:
    return text


PromptFormatter = Callable[[str], str]
PROMPT_FORMATTERS: dict[str, PromptFormatter] = {
    "plain": _plain,
    "hh_first_human_turn": hh_first_human_turn,
}
"""``data.prompt_format`` name -> function from the prompt field's text to the prompt (raises
ValueError with a short reason for unusable text). To add a format, add it here and to
`firm_ray.config.PromptFormat`; a test checks that both list the same names."""

# --------------------------------------------------------------------------- helpers


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose: independent streams per purpose, reproducible per seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kinds |= {list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass(frozen=True)
class _Fields:
    """Which record fields become which parts of a Prompt."""

    prompt: str
    category: str | None
    extra: tuple[str, ...]
    format: str

    @classmethod
    def from_config(cls, cfg: DataConfig) -> _Fields:
        field = cfg.partition.field
        extra = (field,) if field is not None and field != cfg.category_field else ()
        return cls(cfg.prompt_field, cfg.category_field, extra, cfg.prompt_format)

    @property
    def needed(self) -> list[str]:
        names = [self.prompt, self.category, *self.extra]
        return list(dict.fromkeys(n for n in names if n is not None))


@dataclass(frozen=True)
class _Where:
    """How one source is named: in error messages (``label``) and in Prompt.source (``origin``)."""

    label: str
    origin: str

    def error(self, row: int | None, reason: str) -> DataError:
        at = f" row {row}" if row is not None else ""
        return DataError(f"{self.label}{at}: {reason}")


def _missing(field: str, names: Iterable[str], category: bool) -> str:
    listed = ", ".join(str(n) for n in names) or "none"
    hint = "; set data.category_field: null if the data has no categories" if category else ""
    return f"missing field {field!r} (fields: {listed}){hint}"


def _label_value(value: Any, field: str) -> str:
    """A category-like label: a non-empty string or an integer, as a string."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, str):
        raise ValueError(f"field {field!r} is empty")
    raise ValueError(
        f"field {field!r} must be a string or an integer, got {_kind(value)} ({_show(value)})"
    )


def _to_prompts(
    rows: Iterable[tuple[int, Mapping[str, Any]]], fields: _Fields, where: _Where
) -> list[Prompt]:
    """Validate records and turn them into Prompts; raises DataError at the first bad row."""
    formatter = PROMPT_FORMATTERS[fields.format]
    prompts: list[Prompt] = []
    for row, record in rows:
        for name in fields.needed:
            if name not in record:
                is_category = name == fields.category and name != fields.prompt
                raise where.error(row, _missing(name, record, is_category))
        raw = record[fields.prompt]
        if not isinstance(raw, str):
            reason = f"field {fields.prompt!r} must be a string, got {_kind(raw)} ({_show(raw)})"
            raise where.error(row, reason)
        try:
            text = formatter(raw).strip()
        except ValueError as exc:
            fmt = f" (prompt_format {fields.format})" if fields.format != "plain" else ""
            raise where.error(row, f"field {fields.prompt!r}{fmt} {exc}") from None
        if not text:
            raise where.error(row, f"field {fields.prompt!r} is empty")
        try:
            category = None
            if fields.category is not None:
                category = _label_value(record[fields.category], fields.category)
            extra = tuple((name, _label_value(record[name], name)) for name in fields.extra)
        except ValueError as exc:
            raise where.error(row, str(exc)) from None
        prompts.append(Prompt(text, category, f"{where.origin}:{row}", extra))
    if not prompts:
        raise where.error(None, "no prompts (the source is empty)")
    return prompts


# --------------------------------------------------------------------------- file readers


def _check_file(path: str, where: _Where) -> Path:
    p = Path(path)
    if not p.exists():
        raise where.error(None, "file not found")
    if not p.is_file():
        raise where.error(None, "is not a regular file")
    return p


def _read_jsonl(path: Path, where: _Where) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open("rb") as f:
        for row, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                raise where.error(row, reason) from None
            if row == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise where.error(row, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise where.error(row, f"expected a JSON object, got {_kind(record)}")
            yield row, record


_REST = object()  # DictReader key for surplus cells
_SHORT = object()  # DictReader value for missing cells


def _read_csv(
    path: Path, where: _Where, fields: _Fields
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, restkey=_REST, restval=_SHORT)  # type: ignore[arg-type]
        row = 1
        try:
            header = reader.fieldnames
            if not header:
                return
            dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
            if dup is not None:
                raise where.error(1, f"duplicate column {dup!r} in the header")
            for name in fields.needed:
                if name not in header:
                    is_category = name == fields.category and name != fields.prompt
                    raise where.error(1, _missing(name, header, is_category))
            for record in reader:
                row = reader.line_num
                if _REST in record or _SHORT in record.values():
                    cells = (
                        len(header)
                        + len(record.get(_REST, ()))
                        - sum(v is _SHORT for v in record.values())
                    )
                    raise where.error(
                        row, f"has {cells} cells, the header (row 1) has {len(header)}"
                    )
                yield row, record
        except csv.Error as exc:
            raise where.error(reader.line_num or row, f"malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise where.error(reader.line_num + 1, f"not valid UTF-8 ({exc.reason})") from None


def _columnar_rows(
    columns: Mapping[str, list[Any]], num_rows: int
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    names = list(columns)
    for i in range(num_rows):
        yield i + 1, {name: columns[name][i] for name in names}


def _check_columns(names: Sequence[str], fields: _Fields, where: _Where) -> None:
    """Columnar sources: a missing column is reported at row 1."""
    for name in fields.needed:
        if name not in names:
            is_category = name == fields.category and name != fields.prompt
            raise where.error(1, _missing(name, names, is_category))


def _read_parquet(
    path: Path, where: _Where, fields: _Fields, limit: int | None = None
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        _check_columns(names, fields, where)
        if limit is None:
            data = table.read(columns=fields.needed)
        else:  # only the first batch is read from disk
            batch = next(table.iter_batches(batch_size=limit, columns=fields.needed), None)
            data = (
                pa.Table.from_batches([batch])
                if batch is not None
                else table.schema_arrow.empty_table().select(fields.needed)
            )
    except (pa.ArrowException, OSError) as exc:
        raise where.error(None, f"not a readable Parquet file ({_first_line(exc)})") from None
    columns = {name: data.column(name).to_pylist() for name in fields.needed}
    return _columnar_rows(columns, data.num_rows)


# --------------------------------------------------------------------------- Hugging Face

_HF_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}


def _hf_has_splits(path: str) -> bool:
    """False for sources without split names: a saved single Dataset or one data file."""
    p = Path(path)
    if p.is_file():
        return False
    single = (p / "state.json").is_file() and not (p / "dataset_dict.json").is_file()
    return not (p.is_dir() and single)


def _load_hf(path: str, split: str | None, where: _Where) -> Any:
    """The `datasets.Dataset` at path (and split); see the module docstring for the order."""
    import datasets

    p = Path(path)
    try:
        if p.is_dir() and (p / "dataset_dict.json").is_file():
            splits = datasets.load_from_disk(path)
            if split not in splits:
                raise where.error(None, f"split {split!r} not found (splits: {', '.join(splits)})")
            return splits[split]
        if p.is_dir() and (p / "state.json").is_file():
            return datasets.load_from_disk(path)
        if p.is_file():
            builder = _HF_BUILDERS.get(p.suffix.lower())
            if builder is None:
                known = ", ".join(_HF_BUILDERS)
                raise where.error(None, f"unknown data file type {p.suffix!r} (known: {known})")
            return datasets.load_dataset(builder, data_files=str(p), split="train")
        return datasets.load_dataset(path, split=split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types; keep its reason on one line
        raise where.error(None, f"could not load the dataset ({_first_line(exc)})") from exc


def _read_hf(
    path: str, split: str | None, where: _Where, fields: _Fields, limit: int | None = None
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    ds = _load_hf(path, split, where)
    _check_columns(ds.column_names, fields, where)
    if limit is not None and ds.num_rows > limit:
        ds = ds.select(range(limit))
    # one Arrow table (respects any indices mapping), converted column-wise: no per-row objects
    table = ds.select_columns(fields.needed).with_format("arrow")[:]
    columns = {name: table.column(name).to_pylist() for name in fields.needed}
    return _columnar_rows(columns, ds.num_rows)


# --------------------------------------------------------------------------- pipeline


def _read_source(cfg: DataConfig, eval_: bool, limit: int | None = None) -> list[Prompt]:
    """All records (or the first ``limit``) of the training source (or the eval source) as
    Prompts, in source order."""
    fields = _Fields.from_config(cfg)
    assert cfg.path is not None  # DataConfig guarantees it for every source but builtin
    key = "data.eval_split" if eval_ else "data.path"
    if cfg.source == "hf":
        named = _hf_has_splits(cfg.path)
        if named:
            split = cfg.eval_split if eval_ else cfg.split
            label = (
                f"data.eval_split {split!r} of {cfg.path}"
                if eval_
                else f"data.path {cfg.path} split {split!r}"
            )
            where = _Where(label, f"{cfg.path}[{split}]")
            return _to_prompts(_read_hf(cfg.path, split, where, fields, limit), fields, where)
        path = cfg.eval_split if eval_ else cfg.path
        assert path is not None
        where = _Where(f"{key} {path}", path)
        if not Path(path).exists():
            raise where.error(None, "not found")
        return _to_prompts(_read_hf(path, None, where, fields, limit), fields, where)

    path = cfg.eval_split if eval_ else cfg.path
    assert path is not None
    where = _Where(f"{key} {path}", path)
    file = _check_file(path, where)
    rows: Iterable[tuple[int, Mapping[str, Any]]]
    if cfg.source == "jsonl":
        rows = _read_jsonl(file, where)
    elif cfg.source == "csv":
        rows = _read_csv(file, where, fields)
    else:
        rows = _read_parquet(file, where, fields, limit)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    return _to_prompts(rows, fields, where)


def check_first_rows(cfg: DataConfig, rows: int) -> int:
    """Parse and validate the first ``rows`` records of the training source (and of the eval
    source, when ``data.eval_split`` is set) with the loader's own rules; returns how many
    records were checked. The driver's pre-flight uses it on sources too large to read twice;
    raises DataError (one line) like `load_prompts`. ``builtin`` has nothing to check (0)."""
    if cfg.source == "builtin":
        return 0
    checked = len(_read_source(cfg, eval_=False, limit=rows))
    if cfg.eval_split is not None:
        checked += len(_read_source(cfg, eval_=True, limit=rows))
    return checked


def _dedupe(
    prompts: Iterable[Prompt], exclude: set[str] | frozenset[str] = frozenset()
) -> list[Prompt]:
    """Drop prompts whose text was seen before (or is in ``exclude``); keep the first."""
    seen = set(exclude)
    kept: list[Prompt] = []
    for prompt in prompts:
        if prompt.text not in seen:
            seen.add(prompt.text)
            kept.append(prompt)
    return kept


def _stratified_pick(prompts: Sequence[Prompt], k: int, rng: np.random.Generator) -> list[int]:
    """Indices of k prompts, allocated over categories in proportion to their sizes.

    Largest-remainder allocation (ties: larger category, then name), a seeded shuffle within each
    category. Returned sorted, so the subset keeps source order.
    """
    groups: dict[str | None, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt.category, []).append(i)
    cats = sorted(groups, key=lambda c: (c is not None, c or ""))
    n = len(prompts)
    quotas = {c: k * len(groups[c]) / n for c in cats}
    counts = {c: int(quotas[c]) for c in cats}
    by_remainder = sorted(cats, key=lambda c: (-(quotas[c] - counts[c]), -len(groups[c])))
    for c in by_remainder[: k - sum(counts.values())]:
        counts[c] += 1
    picked: list[int] = []
    for c in cats:  # one permutation per category, in a fixed order: reproducible
        members = np.asarray(groups[c])
        picked.extend(int(i) for i in rng.permutation(members)[: counts[c]])
    return sorted(picked)


def _cap(prompts: list[Prompt], cap: int | None, seed: int, purpose: str) -> list[Prompt]:
    if cap is None or len(prompts) <= cap:
        return prompts
    return [prompts[i] for i in _stratified_pick(prompts, cap, seeded_rng(seed, purpose))]


def load_prompts(cfg: DataConfig, seed: int) -> PromptSplits:
    """Training and eval prompts for ``cfg`` (see the module docstring); same cfg+seed, same
    splits. Raises DataError (one line) for a missing file or an unusable record."""
    if cfg.source == "builtin":
        from firm_ray.data.world import world_prompts  # lazy: builds the world only when used

        raw_train, raw_eval = world_prompts(seed, eval_fraction=cfg.eval_fraction)
        eval_ = _dedupe(raw_eval)
        train = _dedupe(raw_train, exclude={p.text for p in eval_})
        duplicates = len(raw_train) + len(raw_eval) - len(train) - len(eval_)
    elif cfg.eval_split is not None:
        raw_train, raw_eval = _read_source(cfg, eval_=False), _read_source(cfg, eval_=True)
        eval_ = _dedupe(raw_eval)
        train = _dedupe(raw_train, exclude={p.text for p in eval_})
        duplicates = len(raw_train) + len(raw_eval) - len(train) - len(eval_)
        if not train:
            raise DataError(
                f"data.path {cfg.path}: every training prompt also appears in "
                f"data.eval_split {cfg.eval_split}"
            )
    else:
        raw = _read_source(cfg, eval_=False)
        pool = _dedupe(raw)
        duplicates = len(raw) - len(pool)
        if len(pool) < 2:
            raise DataError(
                f"data.path {cfg.path}: {len(pool)} distinct prompt(s); need at least 2 to hold "
                "out an eval set (or set data.eval_split)"
            )
        n_eval = min(max(1, round(cfg.eval_fraction * len(pool))), len(pool) - 1)
        if cfg.max_eval_prompts is not None:
            n_eval = min(n_eval, cfg.max_eval_prompts)
        held = set(_stratified_pick(pool, n_eval, seeded_rng(seed, "data.holdout")))
        eval_ = [p for i, p in enumerate(pool) if i in held]
        train = [p for i, p in enumerate(pool) if i not in held]
    eval_ = _cap(eval_, cfg.max_eval_prompts, seed, "data.max_eval_prompts")
    train = _cap(train, cfg.max_prompts, seed, "data.max_prompts")
    return PromptSplits(train=train, eval=eval_, duplicates=duplicates)
