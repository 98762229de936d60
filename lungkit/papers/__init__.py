"""The five papers as data: what each reports (quoted exactly as printed) and how lungkit reproduces it.

One module per paper (``paper000`` .. ``paper004``), each holding data only:

- ``PAPER``: id, title, short_title, file (the text in ``shared/papers``), data, systems, notes.
- ``TABLES``: ``{table_id: table}``; a table has ``title`` (as printed), ``columns`` (metric headers as printed),
  ``metrics`` (canonical metric keys, one per column), ``value_scale`` (``"fraction"`` or ``"percent"``),
  ``metric_definitions``, ``protocol`` (how the paper got the numbers) and ``rows``. A row has ``row`` (name as
  printed), ``line`` (line in the paper text), ``origin`` (``"this paper"``, ``"others' work"``, ...), ``reported``
  (``{metric: printed string}``, e.g. ``"0.01193"``, ``"92%"`` or ``"-"`` for missing), ``reproduced_by``
  (``{"notebook", "model", "result_key"}`` or None) and ``remarks`` (inconsistencies found in the printed numbers).
  Optional table keys: ``aliases`` (other ids for the same table, explained in ``numbering_note``),
  ``compare_with`` (``{metric: "pooled"}`` where the paper's metric is computed on pooled counts; per-image means
  otherwise), ``extra_columns`` (printed non-metric columns, values in each row's ``extra``), ``source``
  (``"guide"`` for numbers taken from GUIDE.md instead of the paper, explained in ``source_note``), ``readings``
  (for a paper that defines none of its metrics: every way lungkit reads its numbers, each shown beside the printed
  row; ``lungkit.reports.table_readings``). Optional row
  keys: ``line_end`` (a row printed over several lines), ``reported_in_text`` (numbers the text adds).
- ``RECIPES``: ``{result_key: recipe dict}`` in the keys of ``lungkit.training.Recipe.from_dict``.
- Optional ``ZERO_SHOT`` (evaluations without training, e.g. SAM), ``POSTPROCESSING`` (``{result_key: name}``) and
  ``TRAINING_DATA`` (``{result_key: "converted" | "augmented" | "petct"}``: which kit dataset of a run a model trains
  on; ``petct`` is the Lung-PET-CT-Dx CT + PET one, ``lungkit.data.petct_kit``).

A metric key ``"dice@LR2"`` means the metric ``dice`` restricted to the class ``LR2`` (``per_class`` in a result's
summary.json).
"""

from __future__ import annotations

import copy
import math
from types import ModuleType

from lungkit.papers import paper000, paper001, paper002, paper003, paper004

PAPERS: dict[str, ModuleType] = {
    "paper000": paper000,
    "paper001": paper001,
    "paper002": paper002,
    "paper003": paper003,
    "paper004": paper004,
}

#: Printed strings that mean "no value" in the papers' tables.
MISSING_MARKS = frozenset({"", "-", "--", "---", "n/a", "NA"})


def all_paper_ids() -> list[str]:
    """Ids of every registered paper, in order (``paper000`` .. ``paper004``)."""
    return sorted(PAPERS)


def get_paper(paper_id: str) -> ModuleType:
    """Return the data module of one paper (with ``PAPER``, ``TABLES``, ``RECIPES``).

    Raises:
        ValueError: for an unknown id, listing the known ones.
    """
    try:
        return PAPERS[paper_id]
    except KeyError:
        raise ValueError(f"unknown paper {paper_id!r}; expected one of {all_paper_ids()}") from None


def resolve_table_id(paper_id: str, table_id: str) -> str:
    """Return the canonical id of a table, accepting the aliases a table lists.

    Raises:
        ValueError: when the paper has no such table, listing its tables.
    """
    tables = get_paper(paper_id).TABLES
    if table_id in tables:
        return table_id
    for canonical_id, table in tables.items():
        if table_id in table.get("aliases", ()):
            return canonical_id
    raise ValueError(f"{paper_id} has no table {table_id!r}; its tables: {sorted(tables) or 'none (none printed)'}")


def get_table(paper_id: str, table_id: str) -> dict:
    """Return a copy of one reported table (aliases accepted, see :func:`resolve_table_id`)."""
    return copy.deepcopy(get_paper(paper_id).TABLES[resolve_table_id(paper_id, table_id)])


def reported_rows(paper_id: str) -> list[dict]:
    """Every row of every table of one paper, flattened.

    Returns:
        Copies of the row dicts, each with ``paper`` and ``table`` added, in table then row order.
    """
    rows = []
    for table_id, table in get_paper(paper_id).TABLES.items():
        for row in table["rows"]:
            rows.append({"paper": paper_id, "table": table_id, **copy.deepcopy(row)})
    return rows


def result_keys(paper_id: str) -> list[str]:
    """Result keys that a paper's rows are reproduced by (trained recipes and zero-shot evaluations)."""
    keys = {row["reproduced_by"]["result_key"] for row in reported_rows(paper_id) if row["reproduced_by"]}
    return sorted(keys)


def get_recipe(paper_id: str, result_key: str) -> dict:
    """Return a copy of one training recipe of a paper.

    Args:
        paper_id: e.g. ``"paper004"``.
        result_key: e.g. ``"attention_unet"`` (the folder name under ``results/<paper_id>/``).

    Returns:
        The recipe dict, in the keys ``lungkit.training.Recipe.from_dict`` reads.

    Raises:
        ValueError: when the paper has no such recipe (a zero-shot key is named as such).
    """
    module = get_paper(paper_id)
    if result_key in module.RECIPES:
        return copy.deepcopy(module.RECIPES[result_key])
    if result_key in getattr(module, "ZERO_SHOT", {}):
        raise ValueError(
            f"{paper_id}/{result_key} is a zero-shot evaluation, not a training recipe; use get_zero_shot()"
        )
    raise ValueError(f"{paper_id} has no recipe {result_key!r}; its recipes: {sorted(module.RECIPES) or 'none'}")


def get_zero_shot(paper_id: str, result_key: str) -> dict:
    """Return a copy of one zero-shot evaluation setup (e.g. SAM with box prompts).

    Raises:
        ValueError: when the paper has no such zero-shot evaluation.
    """
    zero_shot = getattr(get_paper(paper_id), "ZERO_SHOT", {})
    if result_key not in zero_shot:
        raise ValueError(
            f"{paper_id} has no zero-shot evaluation {result_key!r}; it has: {sorted(zero_shot) or 'none'}"
        )
    return copy.deepcopy(zero_shot[result_key])


def get_postprocessing(paper_id: str, result_key: str) -> str:
    """Post-processing a paper applies to one result: a name such as ``"dense_crf"``, or ``"none"``."""
    return getattr(get_paper(paper_id), "POSTPROCESSING", {}).get(result_key, "none")


def get_training_data(paper_id: str, result_key: str) -> str:
    """Which kit dataset of a run a result trains on: ``"augmented"`` (paper 001's offline expansion), ``"petct"``
    (Lung-PET-CT-Dx CT + PET) or ``"converted"``."""
    return getattr(get_paper(paper_id), "TRAINING_DATA", {}).get(result_key, "converted")


def find_rows_for_result(paper_id: str, result_key: str) -> list[dict]:
    """Rows (of any table of the paper) that one result reproduces.

    Returns:
        Copies of the rows with ``paper`` and ``table`` added; empty when no row names ``result_key``.
    """
    return [
        row
        for row in reported_rows(paper_id)
        if row["reproduced_by"] and row["reproduced_by"]["result_key"] == result_key
    ]


def parse_reported_value(printed: str, value_scale: str = "fraction") -> float | None:
    """Turn a printed table value into a fraction (0-1 scale for ratios).

    Args:
        printed: the value as printed, e.g. ``"0.7969"``, ``"97.87"`` (in a percent table), ``"92%"`` or ``"-"``.
        value_scale: ``"fraction"`` or ``"percent"``: how the table prints numbers without a ``%`` sign.

    Returns:
        The value as a float (percentages divided by 100), or None for a missing mark such as ``"-"``.

    Raises:
        ValueError: for a string that is neither a number nor a missing mark, or an unknown scale.
    """
    if value_scale not in ("fraction", "percent"):
        raise ValueError(f"value_scale must be 'fraction' or 'percent', got {value_scale!r}")
    text = printed.strip()
    if text in MISSING_MARKS:
        return None
    is_percent = text.endswith("%")
    try:
        value = float(text.rstrip("%").strip())
    except ValueError:
        raise ValueError(
            f"printed value {printed!r} is neither a number nor a missing mark {sorted(MISSING_MARKS)}"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"printed value {printed!r} is not a finite number")
    return value / 100.0 if (is_percent or value_scale == "percent") else value


__all__ = [
    "PAPERS",
    "all_paper_ids",
    "find_rows_for_result",
    "get_paper",
    "get_postprocessing",
    "get_recipe",
    "get_table",
    "get_zero_shot",
    "parse_reported_value",
    "reported_rows",
    "resolve_table_id",
    "result_keys",
]
