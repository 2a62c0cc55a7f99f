"""Render the study tables in docs/*.md and README.md from the CSV files in results/, so no figure is retyped.

    python3 lab/render.py            rewrite every rendered block in docs/*.md and README.md
    python3 lab/render.py --check    exit 1 if a block is not what the CSVs give (for the tests)
    python3 lab/render.py --plots    also redraw the plots made from results/ (PLOTS)

A block is the text between `<!-- render KIND CSV [FILTER=VALUE ...] -->` and `<!-- /render -->`;
KIND is one of RENDERERS below, CSV a path from the repository's root, and each FILTER=VALUE keeps
only the rows whose column FILTER equals VALUE (equals one of them, for `a|b`; matches it as a shell
pattern, when VALUE holds `*` or `?`);
`columns=A,B,...` makes the `rows` table show only those columns; `latest=A` keeps, of the rows that
share a value of column A, only the last one (the CSVs append, so the last is the newest).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BLOCK = re.compile(r"(<!-- render (\S+) (\S+)((?: \S+=\S+)*) -->\n)(.*?)(<!-- /render -->)", re.S)


def label_curve_table(rows: list[dict]) -> str:
    from lab import label_efficiency

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
    (mean over seeds and their range). Rows from before a setting existed have its default."""
    settings = {"classifier_pooling": "", "classifier_learning_rate": "", "classifier_encoder_rate": "",
                "classifier_layer_decay": "", "classifier_probe_first": "False", "review_passes": "2000", "windows": "2"}
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        key = (row["run"], *(row.get(name) or default for name, default in settings.items()), row["model"], row["labels"])
        groups.setdefault(key, []).append(float(row["accuracy"]))
    lines = ["| run | pooling | learning rate | encoder rate | layer decay | head fitted first | reviews read | windows "
             "| model | labels | seeds | dev accuracy (mean) | min–max |", "|" + " --- |" * 13]
    for (run, *chosen, model, labels), values in groups.items():
        lines.append(f"| {run} | {' | '.join(chosen)} | {model} | {labels} | {len(values)} | "
                     f"{sum(values) / len(values):.4f} | {min(values):.4f}–{max(values):.4f} |")
    return "\n".join(lines)


def pretraining_curve_points(rows: list[dict]) -> dict:
    """{(pretrain_minutes or model, labels): ([accuracy of each seed], first row)} of
    results/pretraining_curve.csv."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        where = float(row["pretrain_minutes"]) if row["model"] == "pretrained" else row["model"]
        groups.setdefault((where, row["labels"]), []).append(row)
    return {key: ([float(row["accuracy"]) for row in group], group[0]) for key, group in groups.items()}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def pretraining_curve_cell(point) -> str:
    accuracies, _ = point
    if len(accuracies) == 1:
        return f"{accuracies[0]:.4f}"
    return f"{mean(accuracies):.4f} ({min(accuracies):.3f}–{max(accuracies):.3f}, {len(accuracies)} seeds)"


def pretraining_curve_table(rows: list[dict]) -> str:
    """Held-out sentiment at each label count against the minutes of pretraining, with the model from
    scratch and the bag of words on the same samples (mean over seeds, and their range)."""
    points = pretraining_curve_points(rows)
    counts = sorted({row["labels"] for row in rows}, key=lambda count: float("inf") if count == "all" else int(count))
    lines = ["| encoder | pretraining steps | held-out masked-token accuracy | "
             + " | ".join(f"{count} labels" for count in counts) + " |", "|" + " --- |" * (3 + len(counts))]
    minutes = sorted({key[0] for key in points if isinstance(key[0], float)})
    for label, where in [("from scratch (0 minutes)", "scratch")] + [(f"pretrained {m:g} minutes", m) for m in minutes] \
            + [("bag of words", "bag_of_words")]:
        cells = [pretraining_curve_cell(points[(where, count)]) if (where, count) in points else "—" for count in counts]
        example = next((points[(where, count)][1] for count in counts if (where, count) in points), {})
        steps = example.get("optimizer_steps") if isinstance(where, float) else ""
        masked = example.get("masked_accuracy") if isinstance(where, float) else ""
        lines.append(f"| {label} | {int(steps):,} | {float(masked):.4f} | " if steps else f"| {label} | — | — | ")
        lines[-1] += " | ".join(cells) + " |"
    return "\n".join(lines)


def time_to_pay_table(rows: list[dict], counts=("300", "1000"), lead: float = 0.05) -> str:
    """From results/pretraining_curve.csv rows: each encoder's minutes and steps against its lead over
    the model from scratch at 300 and 1,000 labels (means over seeds), and whether it pays there: a lead
    of at least `lead` with its worst seed above scratch's best, at both counts."""
    points = pretraining_curve_points(rows)
    minutes = sorted({key[0] for key in points if isinstance(key[0], float)})
    lines = ["| pretraining minutes | steps | " + " | ".join(f"lead at {int(count):,} labels" for count in counts)
             + " | pays |", "|" + " --- |" * (3 + len(counts))]
    for where in minutes:
        cells, pays = [], True
        for count in counts:
            if (where, count) not in points or ("scratch", count) not in points:
                cells.append("—")
                pays = False
                continue
            pretrained, scratch = points[(where, count)][0], points[("scratch", count)][0]
            difference = mean(pretrained) - mean(scratch)
            beyond = min(pretrained) > max(scratch)
            cells.append(f"{difference:+.3f}" + (" (beyond the seeds' range)" if beyond else ""))
            pays = pays and beyond and difference >= lead
        steps = next(points[(where, count)][1]["optimizer_steps"] for count in counts if (where, count) in points)
        lines.append(f"| {where:g} | {int(steps):,} | " + " | ".join(cells) + f" | {'yes' if pays else 'no'} |")
    return "\n".join(lines)


def plot_pretraining_curve(rows: list[dict], path: str) -> None:
    """Held-out sentiment against the optimizer steps of pretraining (each point marked with its
    minutes: a machine's step rate varies between sittings, so steps are the comparable axis), one line
    per label count, the scratch model at 0 and the bag of words as a dashed line of the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pretraining_curve_points(rows)
    counts = sorted({row["labels"] for row in rows}, key=lambda count: float("inf") if count == "all" else int(count))
    figure, axis = plt.subplots(figsize=(8.4, 4.2))
    for count, colour in zip(counts, ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]):
        minutes = sorted(key[0] for key in points if isinstance(key[0], float) and key[1] == count)
        wheres = (["scratch"] if ("scratch", count) in points else []) + minutes
        xs = [int(points[(where, count)][1]["optimizer_steps"]) for where in wheres]
        ys = [mean(points[(where, count)][0]) for where in wheres]
        axis.plot(xs, ys, "o-", color=colour, label=f"{count} labels: fine-tuned (0 = from scratch)")
        for where, x, y in zip(wheres, xs, ys):
            if where != "scratch":
                axis.annotate(f"{where:g} min", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        if ("bag_of_words", count) in points:
            axis.axhline(mean(points[("bag_of_words", count)][0]), color=colour, linestyle="--", alpha=0.7,
                         label=f"{count} labels: bag of words")
    axis.set(xlabel="optimizer steps of pretraining (cpu preset; the minutes beside each point)",
             ylabel="held-out sentiment accuracy",
             title="What pretraining time buys downstream")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def rows_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Every column (or the `columns`) of every row, as it is in the CSV."""
    header = columns or (list(rows[0]) if rows else [])
    return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                     + ["| " + " | ".join(row[key] for key in header) + " |" for row in rows])


RENDERERS = {"label_curve": label_curve_table, "label_screen": label_screen_table, "frozen_probe": frozen_probe_table,
             "study": study_table, "rows": rows_table, "pretraining_curve": pretraining_curve_table,
             "time_to_pay": time_to_pay_table}
# Plots --plots redraws: (CSV, {column: value} of the rows plotted, PNG, plotting function).
PLOTS = [("results/pretraining_curve.csv", {"machine": "epyc-bf16", "review_passes": "6000", "windows": "8|all",
                                           "labels": "100|300|1000|all"},
          "docs/pretraining_curve_cpu_bf16_8windows.png", "plot_pretraining_curve")]


def matches(row: dict, column: str, value: str) -> bool:
    """The row's column holds the value, one of "a|b", or, where the value has `*` or `?`, a match of it
    as a shell pattern (`?` stands for the space a filter cannot hold)."""
    if "*" in value or "?" in value:
        return fnmatch.fnmatchcase(row.get(column, ""), value)
    return row.get(column) in value.split("|")


def render_block(kind: str, path: str, filters: str) -> str:
    with open(os.path.join(ROOT, path), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    options = {}
    for condition in filters.split():
        column, value = condition.split("=", 1)
        if column == "columns":
            options["columns"] = value.split(",")
        elif column == "latest":
            newest = {row[value]: index for index, row in enumerate(rows)}
            rows = [row for index, row in enumerate(rows) if newest[row[value]] == index]
        else:
            rows = [row for row in rows if matches(row, column, value)]
    return RENDERERS[kind](rows, **options) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda match: match.group(1) + render_block(match.group(2), match.group(3), match.group(4))
                     + match.group(6), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that every block is current")
    parser.add_argument("--plots", action="store_true", help="also redraw the plots in PLOTS")
    arguments = parser.parse_args()
    if arguments.plots:
        for source, kept, image, plotter in PLOTS:
            with open(os.path.join(ROOT, source), newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.DictReader(handle) if all(matches(row, *item) for item in kept.items())]
            globals()[plotter](rows, os.path.join(ROOT, image))
            print(f"drew {image}")
    stale = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]:
        text = open(path, encoding="utf-8").read()
        rendered = render(text)
        if rendered != text:
            stale.append(os.path.relpath(path, ROOT))
            if not arguments.check:
                with open(path, "w", encoding="utf-8") as out:
                    out.write(rendered)
    if arguments.check and stale:
        print(f"not rendered from results/: {', '.join(stale)} — run python3 lab/render.py", file=sys.stderr)
        return 1
    print(("rendered: " + ", ".join(stale)) if stale else "every rendered table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
