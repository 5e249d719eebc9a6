"""Dialogue-summarization data: loading, filtering, splits and grouping by dialogue (the prompts
built from it: :mod:`rlhf.prompts`).

Data come from a hub dataset name or a local ``json``/``jsonl``/``csv``/``parquet`` file or folder,
through ``datasets``. Splits are the dataset's own when it has them; otherwise they are cut
deterministically from the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlhf.config import DataConfig
from rlhf.errors import UserError, first_line, shown

SPLITS = ("train", "validation", "test")
EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _local_data_files(path: Path) -> tuple[str, dict[str, list[str]]]:
    """Builder name and ``data_files`` for a local file or folder."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in EXTENSIONS)
    if not files:
        raise UserError(f"data source {path}: no .json/.jsonl/.csv/.parquet file found")
    if path.is_file() and path.suffix not in EXTENSIONS:
        raise UserError(f"data source {path}: unsupported file type '{path.suffix}' (use json, jsonl, csv or parquet)")
    builders = {EXTENSIONS[f.suffix] for f in files}
    if len(builders) > 1:
        raise UserError(f"data source {path}: mixes file types {sorted(builders)}")
    by_split = {s: [str(f) for f in files if f.stem == s] for s in SPLITS}
    by_split = {s: fs for s, fs in by_split.items() if fs}
    if not by_split.get("train") or path.is_file():
        by_split = {"train": [str(f) for f in files]}
    return builders.pop(), by_split


def _check_text_file(path: Path, source: str) -> None:
    """An empty file, a json/jsonl/csv line that is not UTF-8, or a .jsonl line that is not one JSON
    value (a cut last line), named with its line number (``datasets`` would say StopIteration, or
    name the file only on a library log line)."""
    if path.suffix == ".parquet":
        return
    blank = True
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"data source {source}: file {path} line {number} is not valid UTF-8 "
                                f"(byte {line[err.start]:#04x} at column {err.start + 1})") from None
            if path.suffix == ".jsonl" and text.strip():
                try:
                    json.loads(text)
                except ValueError as err:
                    raise UserError(f"data source {source}: file {path} line {number} is not one JSON value "
                                    f"({first_line(err)})") from None
            blank = blank and not line.strip()
    if blank:
        raise UserError(f"data source {source}: file {path} is empty")


def load_raw(source: str):
    """Load ``source`` as a ``datasets.DatasetDict``; bad sources raise :class:`UserError`."""
    import datasets

    path = Path(source).expanduser()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs a bad file before raising: our line says it
    try:
        if path.exists():
            builder, data_files = _local_data_files(path)
            for files in data_files.values():
                for f in files:
                    _check_text_file(Path(f), source)
            # one split at a time: DialogSum's own test file has other columns (summary1..3) than train
            return datasets.DatasetDict({split: datasets.load_dataset(builder, data_files={split: files})[split]
                                         for split, files in data_files.items()})
        if source.startswith((".", "/", "~")) or Path(source).suffix in EXTENSIONS:
            raise UserError(f"data source not found: {source}")
        return datasets.load_dataset(source)
    except UserError:
        raise
    except Exception as err:  # datasets raises many types; the user needs one line
        raise UserError(f"could not read data source {source}: {first_line(err)}") from None
    finally:
        datasets.logging.set_verbosity(level)


def numbered_columns(columns: list[str], name: str) -> list[str]:
    """``summary1, summary2, ...`` when ``name`` = "summary" (DialogSum's test file keeps a dialogue's
    three references in one row), in number order."""
    found = [c for c in columns if c.startswith(name) and c[len(name):].isdigit()]
    return sorted(found, key=lambda c: int(c[len(name):]))


def _with_references(ds, cfg: DataConfig):
    """One-row-per-dialogue files with ``summary1..N``: ``summary`` = the first, ``references`` = all."""
    numbered = numbered_columns(ds.column_names, cfg.summary_column)
    if cfg.summary_column in ds.column_names or not numbered:
        return ds
    return ds.map(lambda ex: {cfg.summary_column: ex[numbered[0]],
                              "references": [ex[c] for c in numbered if isinstance(ex[c], str)]})


def _check_columns(ds, cfg: DataConfig, split: str) -> None:
    for col in (cfg.dialogue_column, cfg.summary_column):
        if col not in ds.column_names:
            raise UserError(
                f"data source {cfg.source}: split '{split}' has no column '{col}' "
                f"(columns: {', '.join(ds.column_names)}); set data.dialogue_column / data.summary_column"
            )


def load_splits(cfg: DataConfig, seed: int):
    """Train/validation/test ``DatasetDict`` with ``dialogue`` and ``summary`` columns, filtered."""
    import datasets

    raw = load_raw(cfg.source)
    raw = datasets.DatasetDict({split: _with_references(ds, cfg) for split, ds in raw.items()})
    for split, ds in raw.items():
        _check_columns(ds, cfg, split)
    raw = datasets.DatasetDict({
        split: ds.rename_columns({c: n for c, n in ((cfg.dialogue_column, "dialogue"), (cfg.summary_column, "summary")) if c != n})
        for split, ds in raw.items()
    })
    splits = _ensure_splits(raw, cfg, seed)
    out = {}
    for split in SPLITS:
        ds = splits[split].filter(lambda ex: _keep(ex, cfg))
        if len(ds) == 0:
            raise UserError(
                f"data source {cfg.source}: split '{split}' is empty after filtering "
                f"(min_chars={cfg.min_chars}, max_chars={cfg.max_chars})"
            )
        if cfg.max_samples is not None:
            ds = cap_dialogues(ds, cfg.max_samples)
        out[split] = ds
    return datasets.DatasetDict(out)


def row_groups(values) -> list[list[int]]:
    """Row indices grouped by equal value, groups in order of first appearance."""
    groups: dict = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    return list(groups.values())


def cap_dialogues(ds, n: int):
    """The rows of the first ``n`` distinct dialogues of ``ds``, every row of a kept dialogue (the
    Hub's DialogSum has a row per reference summary); one row per dialogue: the first ``n`` rows."""
    groups = row_groups(ds["dialogue"])
    if len(groups) == len(ds):
        return ds.select(range(min(n, len(ds))))
    return ds.select(sorted(i for rows in groups[:n] for i in rows))


def _keep(ex: dict, cfg: DataConfig) -> bool:
    d, s = ex["dialogue"], ex["summary"]
    if not isinstance(d, str) or not isinstance(s, str):
        return False
    return len(d) >= cfg.min_chars and (cfg.max_chars is None or len(d) <= cfg.max_chars)


def _ensure_splits(raw, cfg: DataConfig, seed: int):
    """Use the dataset's own splits; cut the missing ones from ``train`` by the seed."""
    import datasets

    if "train" not in raw:
        raise UserError(f"data source {cfg.source}: has no 'train' split (splits: {', '.join(raw)})")
    splits = dict(raw)
    for name, frac in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if name in splits:
            continue
        if frac <= 0:
            raise UserError(f"data source {cfg.source}: has no '{name}' split and data.{name}_fraction is {frac}")
        splits["train"], splits[name] = cut_split(splits["train"], name, frac, seed, f"data source {cfg.source}",
                                                  f"data.{name}_fraction", group_column="dialogue")
    return datasets.DatasetDict({s: splits[s] for s in SPLITS})


def cut_split(train, name: str, frac: float, seed: int, where: str, key: str, group_column: str | None = None):
    """(rest of ``train``, split ``name``): ``frac`` of ``train`` cut off by the seed. Both sizes are
    counted first, as ``train_test_split`` counts them, so a split left empty is one line naming
    ``where`` (the source), the split and the fraction ``key``.

    ``group_column``: rows sharing its value (the Hub's DialogSum has a dialogue once per reference
    summary) stay on one side: the distinct values are cut, then expanded back to their rows. Data
    with one row per value are cut exactly as without it."""
    groups = row_groups(train[group_column]) if group_column else None
    if groups is not None and len(groups) < len(train):
        return _cut_groups(train, groups, name, frac, seed, where, key)
    _cut_size(len(train), frac, name, where, key, f"{len(train)} 'train' rows", "row")
    cut = train.train_test_split(test_size=frac, seed=seed, shuffle=True)
    return cut["train"], cut["test"]


def _cut_size(n: int, frac: float, name: str, where: str, key: str, counted: str, unit: str) -> int:
    """How many of ``n`` units ``frac`` cuts off (counted as ``train_test_split`` counts), or one line
    when either side would be left empty."""
    n_cut = math.ceil(frac * n)
    n_rest = n - n_cut
    if n_cut == 0 or n_rest == 0:
        raise UserError(f"{where}: cutting the '{name}' split from {counted} with {key}={frac} leaves {n_rest} for "
                        f"'train' and {n_cut} for '{name}'; each needs at least one {unit} (add {unit}s, give the data "
                        f"its own '{name}' split or change {key})")
    return n_cut


def _cut_groups(train, groups: list[list[int]], name: str, frac: float, seed: int, where: str, key: str):
    """:func:`cut_split` over groups of rows: ``frac`` of the groups, drawn by the seed's permutation
    (as ``train_test_split`` draws rows), each group's rows kept together and in order."""
    import numpy as np

    n_cut = _cut_size(len(groups), frac, name, where, key,
                      f"{len(groups)} distinct 'train' dialogues ({len(train)} rows)", "dialogue")
    order = np.random.default_rng(seed).permutation(len(groups))
    rows = [[i for g in part for i in groups[g]] for part in (order[n_cut:], order[:n_cut])]
    return train.select(rows[0]), train.select(rows[1])


@dataclass
class EvalDialogue:
    """One held-out dialogue with every reference summary it has and, where the data carry them,
    its abuse flag and key facts."""

    id: str
    dialogue: str
    references: list[str]
    toxic: bool | None = None
    key_facts: list[str] | None = None


def group_dialogues(rows, cfg: DataConfig) -> list[EvalDialogue]:
    """Rows sharing a dialogue become one :class:`EvalDialogue` holding all their references, in
    order of first appearance (the Hub's DialogSum test split has each dialogue three times)."""
    groups: dict[str, EvalDialogue] = {}
    for i, row in enumerate(rows):
        refs = row.get("references") or [row["summary"]]
        d = groups.get(row["dialogue"])
        if d is None:
            toxic = row.get(cfg.toxic_column) if cfg.toxic_column else None
            if toxic is not None:
                _check_flag(cfg, toxic, f"row {i}")
            facts = row.get(cfg.key_facts_column) if cfg.key_facts_column else None
            if facts is not None and not (isinstance(facts, list) and all(isinstance(f, str) for f in facts)):
                raise UserError(f"data source {cfg.source}: column '{cfg.key_facts_column}' is not a list of "
                                f"strings (row {i}: {shown(facts)})")
            groups[row["dialogue"]] = EvalDialogue(str(row.get("id", row.get("fname", i))), row["dialogue"],
                                                   list(refs), toxic, facts)
        else:
            d.references += list(refs)  # one per row, as the one-row summary1..3 layout has them
    return list(groups.values())


def load_eval_dialogues(cfg: DataConfig, seed: int, n: int | None = None, split: str = "test") -> list[EvalDialogue]:
    """The first ``n`` distinct dialogues of ``split`` (all when ``n`` is None), references grouped."""
    ds = load_splits(cfg, seed)[split]
    for col in (cfg.toxic_column, cfg.key_facts_column):
        if col is not None:
            _require_column(ds, cfg, split, col)
    dialogues = group_dialogues(ds, cfg)
    return dialogues[:n] if n else dialogues


def toxic_flags(ds, cfg: DataConfig, split: str) -> list[bool]:
    """``data.toxic_column`` of every row of ``split`` (``rl.toxic_share`` draws batches by it)."""
    _require_column(ds, cfg, split, cfg.toxic_column)
    flags = list(ds[cfg.toxic_column])
    for i, flag in enumerate(flags):
        _check_flag(cfg, flag, f"split '{split}', row {i}")
    return flags


def _require_column(ds, cfg: DataConfig, split: str, col: str) -> None:
    """One line naming the data source, split and column when ``split`` lacks a configured column."""
    if col not in ds.column_names:
        raise UserError(f"data source {cfg.source}: split '{split}' has no column '{col}' "
                        f"(columns: {', '.join(ds.column_names)}); set data.toxic_column / data.key_facts_column")


def _check_flag(cfg: DataConfig, value, where: str) -> None:
    """``data.toxic_column`` holds booleans; anything else is named in one line."""
    if not isinstance(value, bool):
        raise UserError(f"data source {cfg.source}: column '{cfg.toxic_column}' has a non-boolean value "
                        f"{shown(value)} ({where})")
