"""How lamm-cl writes numbers and tables: CSV cells, ``mean ± std`` text, Markdown tables, JSON.

One home for the helpers the result files (:mod:`lamm_cl.results`), the report
(:mod:`lamm_cl.report`) and the sweep table (:mod:`lamm_cl.sweep.table`) share, so a number
is written the same way in every file, and the same results always give the same bytes.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["csv_number", "csv_text", "json_text", "md_cell", "md_row", "md_rule", "md_table", "mean_std",
           "mean_std_text", "plain", "yaml_data"]


def csv_number(x: Any) -> str:
    """A float cell at full precision (shortest repr that round-trips); blank for NaN/None."""
    if x is None:
        return ""
    x = float(x)
    return "" if math.isnan(x) else repr(x)


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text, ``\\n`` line ends (the same bytes on every platform)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def plain(obj: Any) -> Any:
    """Turn numpy scalars/arrays, tuples and paths into plain YAML/JSON data."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON text (see :func:`plain`), non-ASCII kept, ending in a newline."""
    return json.dumps(plain(obj), indent=2, ensure_ascii=False) + "\n"


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of per-seed values; the std is NaN for one value."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def mean_std_text(mean: float, std: Optional[float]) -> str:
    """``mean ± std`` to two decimals; the mean alone when ``std`` is None or NaN (one seed); blank for a NaN mean."""
    if math.isnan(mean):
        return ""
    if std is None or math.isnan(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def md_cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell (``|`` escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_row(cells: Iterable[str]) -> str:
    """One Markdown table row of the cells as given."""
    return "| " + " | ".join(cells) + " |"


def md_rule(n: int) -> str:
    """The rule under a Markdown table header of ``n`` columns."""
    return "|" + "---|" * n


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> List[str]:
    """The lines of a Markdown table, every cell through :func:`md_cell`."""
    return [md_row(md_cell(h) for h in header), md_rule(len(header)),
            *(md_row(md_cell(c) for c in row) for row in rows)]


def yaml_data(text: str) -> Any:
    """YAML text as plain data, parsed by libyaml where PyYAML was built with it (else its pure-Python parser).

    For YAML lamm-cl wrote itself (a run's ``config.yaml``) or only lists: a report or a sweep reads one per
    run, and the C parser takes a fraction of the time for the same data. A user's config goes through
    :func:`lamm_cl.config.load_yaml` instead, which also refuses a key written twice.

    Raises:
        yaml.YAMLError: the text is not YAML.
    """
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
