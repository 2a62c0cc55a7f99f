"""Render the study tables in docs/*.md from the CSV files in results/, so no figure is retyped.

    python3 docs/render.py            rewrite every rendered block in docs/*.md
    python3 docs/render.py --check    exit 1 if a block is not what the CSVs give (for the tests)

A block is the text between `<!-- render KIND CSV [FILTER=VALUE ...] -->` and `<!-- /render -->`;
KIND is one of RENDERERS below, CSV a path from the repository's root, and each FILTER=VALUE keeps
only the rows whose column FILTER equals VALUE.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BLOCK = re.compile(r"(<!-- render (\S+) (\S+)((?: \S+=\S+)*) -->\n)(.*?)(<!-- /render -->)", re.S)


def label_curve_table(rows: list[dict]) -> str:
    from imdb_bert import label_efficiency

    return label_efficiency.markdown_table(rows)


def frozen_probe_table(rows: list[dict]) -> str:
    lines = ["| run | encoder | best layer | dev accuracy (best layer) | every layer |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {row['run']} | {row['encoder']} | {row['best_layer']} | {float(row['best_dev_accuracy']):.4f} | "
              f"{row['dev_accuracy_per_layer']} |" for row in rows]
    return "\n".join(lines)


def study_table(rows: list[dict]) -> str:
    import study

    return study.table_of(rows)


def label_screen_table(rows: list[dict]) -> str:
    """label_curve.py --dev-only rows: dev accuracy per run, fine-tuning settings, model and label count
    (mean over seeds and their range)."""
    settings = ("classifier_learning_rate", "classifier_encoder_rate", "classifier_layer_decay")
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        key = (row["run"], *(row.get(name, "") for name in settings), row["model"], row["labels"])
        groups.setdefault(key, []).append(float(row["accuracy"]))
    lines = ["| run | learning rate | encoder rate | layer decay | model | labels | seeds | dev accuracy (mean) | min–max |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (run, rate, encoder_rate, decay, model, labels), values in groups.items():
        lines.append(f"| {run} | {rate} | {encoder_rate} | {decay} | {model} | {labels} | {len(values)} | "
                     f"{sum(values) / len(values):.4f} | {min(values):.4f}–{max(values):.4f} |")
    return "\n".join(lines)


def rows_table(rows: list[dict]) -> str:
    """Every column of every row, as it is in the CSV."""
    header = list(rows[0]) if rows else []
    return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                     + ["| " + " | ".join(row[key] for key in header) + " |" for row in rows])


RENDERERS = {"label_curve": label_curve_table, "label_screen": label_screen_table, "frozen_probe": frozen_probe_table,
             "study": study_table, "rows": rows_table}


def render_block(kind: str, path: str, filters: str) -> str:
    with open(os.path.join(ROOT, path), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for condition in filters.split():
        column, value = condition.split("=", 1)
        rows = [row for row in rows if row.get(column) == value]
    return RENDERERS[kind](rows) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda match: match.group(1) + render_block(match.group(2), match.group(3), match.group(4))
                     + match.group(6), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that every block is current")
    arguments = parser.parse_args()
    stale = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        text = open(path, encoding="utf-8").read()
        rendered = render(text)
        if rendered != text:
            stale.append(os.path.relpath(path, ROOT))
            if not arguments.check:
                with open(path, "w", encoding="utf-8") as out:
                    out.write(rendered)
    if arguments.check and stale:
        print(f"not rendered from results/: {', '.join(stale)} — run python3 docs/render.py", file=sys.stderr)
        return 1
    print(("rendered: " + ", ".join(stale)) if stale else "every rendered table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
