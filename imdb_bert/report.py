"""report.md: the page a person reads first in a run folder, and the side-by-side table of runs.

The report puts a run's held-out numbers next to what a healthy run of its preset reaches (measured
by us, docs/evaluation.md) and next to the published anchors, then lists the probe's fills
per epoch and shows the curves.
"""

from __future__ import annotations

import os

from imdb_bert.artifacts import REPORT

# What runs of each preset reached, measured by us (docs/evaluation.md gives the commands).
# A time-limited preset buys a different number of steps on every CPU, so each reference says its
# steps; a run is judged against the reference of its own window length and batch nearest to its
# own step count (a step of another shape is a different amount of training).
REFERENCES = {
    "cpu": [
        {"what": "5 fresh-clone runs of earlier sessions (bf16 CPU) and 1 on an AVX2-only CPU (fp32), 3,000 steps; "
                 "perplexity and cloze of the last one only",
         "max_seq_len": 128, "batch_size": 64, "optimizer_steps": 3000, "masked_accuracy": (0.2451, 0.2587), "perplexity": (105.4, 105.4),
         "cloze_top1": (0.2833, 0.2833), "cloze_top5": (0.528, 0.528)},
        {"what": "1 fresh-clone run, 14 minutes on an AVX2-only 2-core CPU (noise not measured yet)",
         "max_seq_len": 128, "batch_size": 64, "optimizer_steps": 1033, "masked_accuracy": (0.1151, 0.1151), "perplexity": (423.9, 423.9),
         "cloze_top1": (0.0787, 0.0787), "cloze_top5": (0.2163, 0.2163)},
        {"what": "2 seeds of the recipe study's confirmation, 12 minutes on an AVX2-only 2-core CPU (fp32)",
         "max_seq_len": 64, "batch_size": 32, "optimizer_steps": 2880, "masked_accuracy": (0.1928, 0.1980),
         "perplexity": (206.7, 220.4), "cloze_top1": (0.1783, 0.2020), "cloze_top5": (0.374, 0.400)},
    ],
    "tiny": [
        {"what": "the tests' tiny preset on 400 reviews (says only that the code runs)", "optimizer_steps": 447,
         "masked_accuracy": (0.02, 0.06), "cloze_top5": (0.05, 0.5)},
    ],
}
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


def verdict(value, healthy: tuple[float, float] | None) -> str:
    if value is None or healthy is None:
        return ""
    low, high = healthy
    if value < low:
        return f"below {low:.3f}–{high:.3f}"
    if value > high:
        return f"above {low:.3f}–{high:.3f}"
    return f"within {low:.3f}–{high:.3f}"


SHAPE = ("max_seq_len", "batch_size")


def nearest_reference(preset: str, steps, settings: dict) -> dict:
    """The measured reference of `preset` with the run's window length and batch whose step count is
    nearest `steps` (empty if none)."""
    references = [reference for reference in REFERENCES.get(preset, [])
                  if all(reference.get(key, settings.get(key)) == settings.get(key) for key in SHAPE)]
    if not references:
        return {}
    return min(references, key=lambda reference: abs(reference["optimizer_steps"] - (steps or 0)))


def render(name: str, preset: str, scores: dict, settings: dict, probe_history: list[dict],
           has_curves: bool) -> str:
    """The report of one run as Markdown."""
    healthy = nearest_reference(preset, scores.get("optimizer_steps"), settings)
    lines = [f"# Run `{name}` (preset `{preset}`)", ""]
    lines += [f"{scores.get('optimizer_steps', '?')} optimizer steps; vocabulary {settings.get('vocab_size')}, "
              f"{settings.get('num_layers')} layers of hidden {settings.get('hidden_size')}, windows of "
              f"{settings.get('max_seq_len')}, batch {settings.get('batch_size')}, masking "
              f"{settings.get('mask_rate')} ({settings.get('mask_token_rate')} [MASK] / "
              f"{settings.get('random_token_rate')} random). All numbers are on held-out reviews.", ""]
    if settings.get("objective") == "electra":
        lines += ["Objective `electra` (replaced-token detection): the encoder was trained to tell which tokens a small "
                  "generator replaced. The masked-token figures, the cloze and the probe below are the generator's "
                  f"(a masked LM {settings.get('generator_size')} of the encoder's width, sharing its embeddings); "
                  "fine-tuning uses the encoder.", ""]
    lines += ["| measure | this run | healthy runs of this preset (nearest in steps) |", "| --- | --- | --- |"]
    for key, label in LABELS:
        value = scores.get(key)
        shown = "—" if value is None else (f"{value:.1f}" if key == "perplexity" else f"{value:.4f}")
        lines.append(f"| {label} | {shown} | {verdict(value, healthy.get(key)) or '—'} |")
    lines += ["", "Reference runs of this preset: " + ("; ".join(
                  f"{reference['what']} ({reference['optimizer_steps']} steps"
                  + "".join(f", {key} {reference[key]}" for key in SHAPE if key in reference) + ")"
                  for reference in REFERENCES.get(preset, []))
                  or "none measured yet") + ". Fewer steps than the reference reach lower numbers; "
              "that is the budget, not a broken run.",
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
    with open(os.path.join(folder, REPORT), "w", encoding="utf-8") as out:
        out.write(text)


LABEL_CURVE_HEADING = "## Sentiment against the number of labels"


def label_curve_section(table: str, image: str) -> str:
    """The report's section on the label curve (label_curve.py): its table and its plot."""
    return "\n".join([LABEL_CURVE_HEADING, "",
                      "Held-out accuracy of the fine-tuned pretrained encoder, the same architecture trained from "
                      "random weights, and a bag of words, each trained on the same class-balanced sample of "
                      "labelled training reviews (mean over seeds, their range in brackets; label_curve.py):", "",
                      table, "", f"![held-out accuracy against labels]({image})", ""])


def put_section(folder: str, heading: str, section: str) -> None:
    """Replace the report's section under `heading` (to the next `## ` heading) with `section`, or
    add it at the end; the rest of the report is kept as it is."""
    path = os.path.join(folder, REPORT)
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    lines, kept, skipping = text.splitlines(), [], False
    for line in lines:
        if line.startswith("## "):
            skipping = line.strip() == heading
        if not skipping:
            kept.append(line)
    write(folder, "\n".join(kept).rstrip() + "\n\n" + section)


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
