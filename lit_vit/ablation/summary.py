"""The results table printed at the end of a sweep: mean +- std over seeds per variant, never cut.

On a terminal a rich table that fits the width by rule: the least important columns go first (wall s, img/s, params,
seeds), then headers are abbreviated, then "97.10 +- 0.15" is written "97.10+-0.15"; the variant names and the
accuracy columns are never dropped or shortened, and if they alone do not fit, the plain table is printed instead (the
terminal wraps its lines, nothing is cut). Not on a terminal (a log file, tee, SLURM, CI) the plain fixed-width text
table, every variant name and number in full.
"""

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from lit_vit.ablation.results import fewshot_columns, mean_std

TITLE = "final validation top-1 (mean +- std over seeds)"
# columns that may go when the table is too wide, first to go first
OPTIONAL = ("wall s", "img/s", "params", "seeds")
SHORT = {"final top-1 %": "final %", "best top-1 %": "best %"}


def _mean_std_text(fractions: list[float | None]) -> str:
    values = [100 * v for v in fractions if v is not None]
    return "{:.2f} +- {:.2f}".format(*mean_std(values)) if values else "-"


def summary_rows(rows: list[dict[str, Any]], order: list[str]) -> tuple[list[str], list[list[str]]]:
    """(header, one row of text per variant) in `order`."""
    shots = fewshot_columns(rows)  # FewShotEval's probes, when the runs had it
    header = ["variant", "seeds", "final top-1 %", "best top-1 %", *(f"{c[8:]} %" for c in shots), "params"]
    header += ["img/s", "wall s"]
    table = []
    for name in order:
        mine = [r for r in rows if r["variant"] == name]
        if not mine:
            continue
        images = [r.get("train_images_per_s") or 0 for r in mine]
        walls = [r.get("wall_s") or 0 for r in mine]
        table.append(
            [
                name,
                str(len(mine)),
                _mean_std_text([r["final_val_acc1"] for r in mine]),
                _mean_std_text([r["best_val_acc1"] for r in mine]),
                *(_mean_std_text([r.get(c) for r in mine]) for c in shots),
                f"{mine[0]['params']:,}" if mine[0].get("params") is not None else "-",
                f"{sum(images) / len(images):.0f}",
                f"{sum(walls) / len(walls):.0f}",
            ]
        )
    return header, table


def plain_table(rows: list[dict[str, Any]], order: list[str]) -> str:
    """Fixed-width text: the variant column left-aligned, the numbers right-aligned, nothing shortened."""
    header, body = summary_rows(rows, order)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return "\n".join([TITLE, rule, line(header), rule, *(line(r) for r in body), rule])


def _width(header: list[str], body: list[list[str]]) -> int:
    """Width of a rich table with the default box and padding: 1 space each side of a cell, a rule between."""
    return sum(max(len(r[i]) for r in [header, *body]) + 3 for i in range(len(header))) + 1


def fitted_table(rows: list[dict[str, Any]], order: list[str], width: int) -> Table | None:
    """A rich table no wider than `width` (columns dropped or headers shortened by rule), or None when even the
    variant names and the accuracy columns alone do not fit."""
    header, body = summary_rows(rows, order)
    columns = list(range(len(header)))
    for name in OPTIONAL:
        if _width([header[i] for i in columns], [[r[i] for i in columns] for r in body]) <= width:
            break
        columns.remove(header.index(name))
    names = [header[i] for i in columns]
    cells = [[r[i] for i in columns] for r in body]
    if _width(names, cells) > width:
        names = [SHORT.get(n, n.replace(" %", "")) for n in names]
    if _width(names, cells) > width:
        cells = [[c.replace(" +- ", "+-") for c in r] for r in cells]
    if _width(names, cells) > width:
        return None
    table = Table(title=TITLE)
    for i, name in enumerate(names):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for r in cells:
        table.add_row(*r)
    return table


def print_summary(rows: list[dict[str, Any]], order: list[str], stream=None) -> None:
    stream = stream or sys.stdout
    if stream.isatty():
        console = Console(file=stream)
        table = fitted_table(rows, order, console.width)
        if table is not None:
            console.print(table)
            return
    print(plain_table(rows, order), file=stream, flush=True)
