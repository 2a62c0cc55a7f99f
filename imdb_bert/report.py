"""report.md: the page a person reads first in a run folder, and the side-by-side table of runs.

The report puts a run's held-out numbers next to what a healthy run of its preset reaches (measured
by us, docs/evaluation.md) and next to the published anchors, then lists the probe's fills
per epoch and shows the curves.
"""

from __future__ import annotations

import math
import os

from imdb_bert.artifacts import REPORT

# A time-limited preset buys a different number of steps on every CPU, so a run is compared with the
# recorded runs of its preset and shape at its own step count.
SAME_STEPS = 0.1   # recorded runs within 10% of a run's steps count as "at its step count"
ANCHORS = [
    ("the original project's 'masked accuracy' 0.977",
     "counted every token, most of them unmasked and copied from the input; our all-positions "
     "accuracy is the same measure (printed as all_positions_accuracy_original_style)"),
    ("keras-io 'End-to-end Masked Language Modeling with BERT': sentiment 0.844",
     "its fine-tuned classifier on the IMDB test reviews; compare with the sentiment accuracy below"),
]
LABELS = [("masked_accuracy", "held-out masked-token accuracy (fixed protocol)"),
          ("perplexity", "held-out perplexity (fixed protocol)"),
          ("cloze_top1", "word-level cloze top-1"), ("cloze_top5", "word-level cloze top-5"),
          ("sentiment_accuracy", "fine-tuned sentiment accuracy (held-out reviews)")]


SHAPE = ("max_seq_len", "batch_size")


def read_references(path: str) -> list[dict]:
    """Recorded runs to compare with (a CSV: preset, window length and batch, machine, optimizer steps,
    held-out figures), or none if the file is not there."""
    import csv

    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def references_for(references: list[dict], preset: str, settings: dict) -> list[dict]:
    """The recorded runs of `preset` with the run's window length and batch (a step of another shape is
    a different amount of training)."""
    return [row for row in references if row["preset"] == preset
            and all(str(settings.get(key)) == row[key] for key in SHAPE)]


def expected_at(rows: list[dict], key: str, steps: int) -> tuple[float, float, str] | None:
    """(low, high, how) of measure `key` for a run of `steps` steps: the range of the recorded runs within
    10% of its steps, else the value interpolated (linearly in log steps) between the nearest recorded runs
    below and above; None outside the recorded steps."""
    points = sorted((int(row["optimizer_steps"]), float(row[key])) for row in rows if row.get(key))
    if not points or not steps:
        return None
    near = [value for count, value in points if abs(count - steps) <= SAME_STEPS * steps]
    if near:
        return min(near), max(near), f"{len(near)} recorded run{'s' * (len(near) > 1)} within 10% of its steps"
    below = [point for point in points if point[0] < steps]
    above = [point for point in points if point[0] > steps]
    if not below or not above:
        return None
    (low_steps, low_value), (high_steps, high_value) = below[-1], above[0]
    share = (math.log(steps) - math.log(low_steps)) / (math.log(high_steps) - math.log(low_steps))
    value = low_value + share * (high_value - low_value)
    return value, value, f"interpolated between the runs at {low_steps:,} and {high_steps:,} steps"


def verdict(value, expected, form: str = "{:.4f}") -> str:
    if value is None or expected is None:
        return ""
    low, high, how = expected
    span = form.format(low) if low == high else f"{form.format(low)}–{form.format(high)}"
    where = "below" if value < low else "above" if value > high else "within" if low != high else "at"
    return f"{where} {span} ({how})"


def render(name: str, preset: str, scores: dict, settings: dict, probe_history: list[dict],
           has_curves: bool, references: list[dict]) -> str:
    """The report of one run as Markdown, compared with the `references` (`read_references`) of its
    preset and shape."""
    steps = scores.get("optimizer_steps")
    recorded = references_for(references, preset, settings)
    lines = [f"# Run `{name}` (preset `{preset}`)", ""]
    lines += [f"{scores.get('optimizer_steps', '?')} optimizer steps; vocabulary {settings.get('vocab_size')}, "
              f"{settings.get('num_layers')} layers of hidden {settings.get('hidden_size')}, windows of "
              f"{settings.get('max_seq_len')}, batch {settings.get('batch_size')}, masking "
              f"{settings.get('mask_rate')} ({settings.get('mask_token_rate')} [MASK] / "
              f"{settings.get('random_token_rate')} random). All numbers are on held-out reviews.", ""]
    lines += ["| measure | this run | recorded runs of this preset and shape at its step count |", "| --- | --- | --- |"]
    for key, label in LABELS:
        value = scores.get(key)
        form = "{:.1f}" if key == "perplexity" else "{:.4f}"
        shown = "—" if value is None else form.format(value)
        expected = expected_at(recorded, key, steps) if key != "sentiment_accuracy" else None
        lines.append(f"| {label} | {shown} | {verdict(value, expected, form) or '—'} |")
    if recorded:
        counts = sorted(int(row["optimizer_steps"]) for row in recorded)
        machines = sorted({row["machine"] for row in recorded})
        lines += ["", f"Recorded: {len(recorded)} runs of preset `{preset}` with windows of "
                      f"{settings.get('max_seq_len')} and batch {settings.get('batch_size')}, at {counts[0]:,}–{counts[-1]:,} "
                      f"steps, on {'; '.join(machines)}."
                  + ("" if counts[0] * (1 - SAME_STEPS) <= (steps or 0) <= counts[-1] * (1 + SAME_STEPS) else
                     f" This run's {steps or 0:,} steps are outside what was recorded, so it is not compared."),
                  "A machine that makes more steps in the same minutes reaches higher figures; the comparison is at "
                  "equal steps, so it judges the run, not the machine."]
    else:
        lines += ["", f"No runs of preset `{preset}` with this shape are recorded."]
    lines += [
              "Masked-token numbers depend on the vocabulary size (a smaller one is easier to guess); the cloze "
              "does not: it asks for whole frequent words that every preset's vocabulary holds as one piece.", ""]
    lines += ["## Anchors", ""] + [f"- **{what}**: {why}." for what, why in ANCHORS]
    if scores.get("all_positions_accuracy") is not None:
        lines.append(f"- This run's all-positions accuracy: {scores['all_positions_accuracy']:.4f}.")
    lines += ["", "## Probe per epoch", ""]
    for entry in probe_history:
        fills = ", ".join(f"{fill['predicted mask token']} {fill['probability']:.3f}" for fill in entry["fills"])
        lines.append(f"- epoch {entry['epoch']}: {entry['fills'][0]['input_text']} → {fills}")
    if not probe_history:
        lines.append("- (no probe history in this run folder)")
    if has_curves:
        lines += ["", "## Curves", "", "![training and held-out curves](curves.png)"]
    return "\n".join(lines) + "\n"


def write(folder: str, text: str) -> None:
    """Write the report; sections other tools added to the old one (under a `## ` heading `text`
    lacks, such as the label curve's) are kept at its end."""
    path = os.path.join(folder, REPORT)
    headings = {heading for heading, _ in sections(text)[1]}
    added = [section for heading, section in sections(_read(path))[1] if heading not in headings]
    _save(path, [text] + added)


def put_section(folder: str, heading: str, section: str) -> None:
    """Replace the report's section under `heading` (to the next `## ` heading) with `section`, or
    add it at the end; the rest of the report is kept as it is."""
    path = os.path.join(folder, REPORT)
    preamble, found = sections(_read(path))
    _save(path, [preamble] + [text for name, text in found if name != heading] + [section])


def sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """A Markdown text's lines before its first `## ` heading, and (heading, text) of each `## ` section."""
    preamble, found = [], []
    for line in text.splitlines():
        if line.startswith("## "):
            found.append((line.strip(), []))
        (found[-1][1] if found else preamble).append(line)
    return "\n".join(preamble), [(heading, "\n".join(lines)) for heading, lines in found]


def _read(path: str) -> str:
    return open(path, encoding="utf-8").read() if os.path.isfile(path) else ""


def _save(path: str, parts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n\n".join(part.strip("\n") for part in parts if part.strip()) + "\n")


COMPARE_COLUMNS = [("run", "{}"), ("preset", "{}"), ("steps", "{}"), ("masked acc", "{:.4f}"), ("ppl", "{:.1f}"),
                   ("cloze@1", "{:.4f}"), ("cloze@5", "{:.4f}"), ("sentiment", "{:.4f}")]


def compare_table(rows: list[dict]) -> str:
    """One Markdown table of runs side by side, plus the settings in which they differ."""
    keys = ["name", "preset", "optimizer_steps", "masked_accuracy", "perplexity", "cloze_top1", "cloze_top5",
            "sentiment_accuracy"]
    differing = sorted(key for key in set().union(*(row["settings"] for row in rows))
                       if len({repr(row["settings"].get(key)) for row in rows}) > 1
                       and key not in ("run_name", "preset", "runs_dir", "data_dir"))
    header = [title for title, _ in COMPARE_COLUMNS] + differing
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [("—" if row.get(key) is None else form.format(row[key])) for key, (_, form) in zip(keys, COMPARE_COLUMNS)]
        cells += [str(row["settings"].get(key)) for key in differing]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
