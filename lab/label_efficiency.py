"""Where pretraining pays: held-out sentiment accuracy against the number of labelled reviews.

For each label count and seed, a class-balanced sample of the labelled training reviews (a seed's
smaller samples are the start of its larger ones), and three models trained on exactly that sample:
the pretrained encoder fine-tuned, the same architecture from random weights, and the bag of words.
How long each trains follows a rule fixed before any result was seen (`schedule_for`), the epoch
kept is the one with the best accuracy on a fixed class-balanced subset of the dev split, and the held-out reviews
are scored once per model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

MODELS = ("pretrained", "scratch", "bag_of_words")
SCORED_ON = {False: "held-out", True: "dev (the reviews that do not pick the epoch)"}
MODEL_LABELS = {"pretrained": "pretrained encoder, fine-tuned", "scratch": "same architecture from scratch",
                "bag_of_words": "bag of words (TF-IDF + logistic regression)"}


def parse_counts(text: str) -> list[int | str]:
    """`100,300,all` -> [100, 300, "all"]; ValueError on anything else."""
    counts: list[int | str] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.append("all")
        elif part.isdigit() and int(part) >= 2:
            counts.append(int(part))
        else:
            raise ValueError(f"--labels takes label counts of at least 2 or 'all', separated by commas; got {part!r}")
    return sorted(set(counts), key=lambda count: math.inf if count == "all" else count)


def balanced_sample(labels: np.ndarray, count: int | str, seed: int) -> np.ndarray:
    """Sorted indices of `count` reviews, half of each label (`all`: every index). For one seed each
    label's reviews are taken in one fixed random order, so a smaller sample is part of a larger one."""
    if count == "all":
        return np.arange(len(labels))
    order = np.random.default_rng(seed)
    chosen = []
    for label, wanted in ((0, count // 2), (1, count - count // 2)):
        of_label = np.flatnonzero(labels == label)
        if wanted > len(of_label):
            raise ValueError(f"a sample of {count} needs {wanted} reviews of label {label}; the training split has "
                             f"{len(of_label)}")
        chosen.append(order.permutation(of_label)[:wanted])
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class Schedule:
    repeats: int      # passes over the sample that make one "epoch" (one look at dev)
    epochs: int


def schedule_for(reviews: int, min_epochs: int, review_passes: int = 6000, max_epochs: int = 8) -> Schedule:
    """The rule, fixed in advance, for how long a model trains on `reviews` labelled reviews: an epoch
    is the sample repeated until it holds at least `review_passes / max_epochs` reviews, and there are
    enough epochs for about `review_passes` reviews in all, between `min_epochs` (the config's) and
    `max_epochs`. Small samples get many passes, large ones the config's epochs."""
    repeats = max(1, math.ceil(review_passes / max_epochs / reviews))
    epochs = math.ceil(review_passes / (reviews * repeats))
    return Schedule(repeats, max(min_epochs, min(max_epochs, epochs)))


def summary(rows: list[dict]) -> list[dict]:
    """Mean, min and max held-out accuracy and the number of seeds per (model, label count)."""
    grouped: dict[tuple, list[float]] = {}
    for row in rows:
        grouped.setdefault((row["model"], int(row["train_reviews"])), []).append(float(row["accuracy"]))
    return [{"model": model, "train_reviews": count, "seeds": len(values), "mean": float(np.mean(values)),
             "min": float(np.min(values)), "max": float(np.max(values))}
            for (model, count), values in sorted(grouped.items(), key=lambda item: (MODELS.index(item[0][0]), item[0][1]))]


def markdown_table(rows: list[dict]) -> str:
    """Held-out accuracy per label count (columns) and model (rows): mean, and the range over seeds."""
    points = summary(rows)
    counts = sorted({point["train_reviews"] for point in points})
    lines = ["| model | " + " | ".join(f"{count:,} labels" for count in counts) + " |",
             "| --- |" + " --- |" * len(counts)]
    for model in MODELS:
        cells = []
        for count in counts:
            point = next((p for p in points if p["model"] == model and p["train_reviews"] == count), None)
            if point is None:
                cells.append("—")
            elif point["seeds"] == 1:
                cells.append(f"{point['mean']:.3f}")
            else:
                cells.append(f"{point['mean']:.3f} ({point['min']:.3f}–{point['max']:.3f}, {point['seeds']} seeds)")
        lines.append(f"| {MODEL_LABELS[model]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Held-out accuracy against label count (log scale): each model's mean over seeds, its range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = summary(rows)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for model, marker in zip(MODELS, "os^"):
        mine = [point for point in points if point["model"] == model]
        if not mine:
            continue
        counts = [point["train_reviews"] for point in mine]
        axis.plot(counts, [point["mean"] for point in mine], marker + "-", label=MODEL_LABELS[model])
        axis.fill_between(counts, [point["min"] for point in mine], [point["max"] for point in mine], alpha=0.2)
    axis.set_xscale("log")
    axis.set(xlabel="labelled training reviews (log scale)", ylabel="held-out accuracy", title=title)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@dataclass(frozen=True)
class CurvePlan:
    """Which points the curve has and how reviews are read (the pipeline's values, config.py)."""
    counts: tuple                 # label counts, "all" last
    seeds: tuple                  # sample and initialisation seeds for counts up to `few_labels`
    few_labels: int = 1000        # above it, the first seed only
    dev_reviews: int = 500        # the fixed, class-balanced dev subset that picks the epoch
    batch_size: int = 32
    max_seq_len: int = 64
    max_windows: int = 2          # a review is read as up to this many windows (its start; the curve's cost grows with it)
    review_passes: int = 6000     # reviews a model reads in all (`schedule_for`)
    classifier_windows: str = "head"
    classifier_epochs: int = 1
    models: tuple = MODELS
    dev_only: bool = False        # score on the dev reviews after the first `dev_reviews`, never on the held-out ones

    def seeds_for(self, count) -> tuple:
        """Every seed up to `few_labels` labels, the first one above."""
        return self.seeds if count != "all" and count <= self.few_labels else self.seeds[:1]


def labels_of(reviews) -> np.ndarray:
    """The labels of (text, label) reviews, in order."""
    return np.fromiter(reviews.map(lambda text, label: label).as_numpy_iterator(), dtype=np.int64)


def select(reviews, indices: np.ndarray, total: int):
    """The (text, label) reviews at `indices` (of `total`), in their order."""
    import tensorflow as tf

    chosen = np.zeros(total, dtype=bool)
    chosen[indices] = True
    keep = tf.constant(chosen)
    def kept(index, review):
        return keep[index]

    def without_index(index, review):
        return review

    return reviews.enumerate().filter(kept).map(without_index)


def balanced_part(reviews, count: int, seed: int = 0):
    """(a class-balanced sample of `count` of the (text, label) `reviews` — fewer if one label has fewer
    than half of them —, the others), both cached. The splits are stored grouped by label, so their
    first reviews are no sample."""
    labels = labels_of(reviews)
    smaller_class = min(int(np.sum(labels == 0)), int(np.sum(labels == 1)))
    chosen = balanced_sample(labels, min(count, 2 * smaller_class), seed)
    others = np.setdiff1d(np.arange(len(labels)), chosen)
    return select(reviews, chosen, len(labels)).cache(), select(reviews, others, len(labels)).cache()


# The pipeline config values a plan takes as they are.
PLAN_KEYS = ("batch_size", "max_seq_len", "classifier_windows", "classifier_epochs")


def fit_key(plan: CurvePlan, model_name: str, count, seed: int, inputs: dict, fine_tuning=None,
            model_config=None) -> str:
    """What a fit that does not read the pretrained encoder (scratch, bag of words) depends on, as a
    hash: its sample (count, seed), the plan's reading and schedule, the data and vocabulary (`inputs`,
    their fingerprints) and, for scratch, the fine-tuning settings and the architecture. Any change refits."""
    import dataclasses
    import hashlib
    import json

    plan_values = {key: value for key, value in dataclasses.asdict(plan).items() if key not in ("counts", "seeds", "models")}
    depends = {"model": model_name, "labels": count, "seed": seed, "plan": plan_values, "inputs": inputs}
    if model_name == "scratch":
        depends.update(fine_tuning=dataclasses.asdict(fine_tuning), shape=dataclasses.asdict(model_config))
    else:
        from imdb_bert import classifier

        depends["bag_of_words"] = classifier.BAG_OF_WORDS
    return hashlib.sha256(json.dumps(depends, sort_keys=True, default=str).encode()).hexdigest()[:20]


def measure(plan: CurvePlan, fine_tuning, prepared: str, model_path: str, tokens: list[str], model_config,
            on_row=print, fit_cache: str | None = None, inputs: dict | None = None) -> list[dict]:
    """Every point of the curve: one row per (label count, seed, model), passed to `on_row` as soon
    as it is measured (a progress line), and returned.

    With `fit_cache` (a folder), the rows of the fits that do not read the pretrained encoder are kept
    there under `fit_key` (which needs `inputs`, the data and vocabulary fingerprints) and reused, so a
    second encoder of the same shape costs only its own fits; a reused row says `cached`."""
    import json
    import warnings

    from imdb_bert import artifacts

    import keras

    from imdb_bert import classifier, probe, vocab
    from imdb_bert.model import build_masked_lm

    warnings.filterwarnings("ignore", message="Your input ran out of data")
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables .*output_bias")
    tokenizer = vocab.make_tokenizer(tokens)
    head_tail = plan.classifier_windows == "head_tail"
    longest = plan.max_windows * plan.max_seq_len

    def windows_of(reviews):
        return classifier.labelled_review_windows(reviews, tokenizer, plan.max_seq_len, plan.max_windows,
                                                  head_tail)

    train_reviews = classifier.labelled_reviews(prepared, "train")
    labels = labels_of(train_reviews)
    dev_reviews, rest_of_dev = balanced_part(classifier.labelled_reviews(prepared, "dev"), plan.dev_reviews)
    held_out_reviews = rest_of_dev if plan.dev_only else classifier.labelled_reviews(prepared, "validation").cache()
    dev = classifier.batches(windows_of(dev_reviews), plan.batch_size, longest)
    held_out = classifier.batches(windows_of(held_out_reviews), plan.batch_size, longest)
    rows = []
    for count in plan.counts:
        for seed in plan.seeds_for(count):
            chosen = balanced_sample(labels, count, seed)
            sample, reviews = select(train_reviews, chosen, len(labels)), len(chosen)
            schedule = schedule_for(reviews, plan.classifier_epochs, plan.review_passes)
            # The shuffle's order depends on the global seed too: set here, a point does not depend on
            # which points ran before it in the process.
            keras.utils.set_random_seed(seed)
            train = classifier.batches(windows_of(sample).repeat(schedule.repeats), plan.batch_size, longest,
                                       shuffle_seed=seed)
            steps_per_epoch = sum(1 for _ in train)
            for model_name in plan.models:
                cached_path = None
                if fit_cache and model_name != "pretrained":
                    key = fit_key(plan, model_name, count, seed, inputs or {}, fine_tuning, model_config)
                    cached_path = os.path.join(fit_cache, f"{model_name}-{key}.json")
                    if os.path.isfile(cached_path):
                        with open(cached_path, encoding="utf-8") as handle:
                            row = {**json.load(handle), "cached": True}
                        on_row(row)
                        rows.append(row)
                        continue
                started = time.time()
                keras.backend.clear_session()
                keras.utils.set_random_seed(seed)
                if model_name == "bag_of_words":
                    model = classifier.fit_bag_of_words(sample)   # nothing to pick on dev
                    result = {**classifier.evaluate_bag_of_words(model, held_out_reviews), "epoch_picked_on_dev": None,
                              "dev_accuracy": classifier.evaluate_bag_of_words(model, dev_reviews)["accuracy"]}
                    how_trained = {"epochs": None, "passes_per_epoch": None, "windows": "all"}
                else:
                    masked_lm = (probe.load_model(model_path) if model_name == "pretrained"
                                 else build_masked_lm(model_config))
                    model, best, _ = classifier.fine_tune(masked_lm, fine_tuning, train, dev, schedule.epochs,
                                                          steps_per_epoch, verbose=0)
                    result = classifier.evaluate_picked(model, held_out, best)
                    how_trained = {"epochs": schedule.epochs, "passes_per_epoch": schedule.repeats,
                                   "windows": plan.max_windows}   # of each review
                row = {"labels": count, "train_reviews": reviews, "seed": seed, "model": model_name,
                       "scored_on": SCORED_ON[plan.dev_only], "accuracy": round(result["accuracy"], 4),
                       "dev_accuracy": round(result["dev_accuracy"], 4),
                       "epoch_picked": result["epoch_picked_on_dev"],
                       **how_trained,
                       "review_passes": plan.review_passes,   # the curve's rule (the bag of words has its own)
                       "seconds": round(time.time() - started, 1)}
                if cached_path:
                    os.makedirs(fit_cache, exist_ok=True)
                    artifacts.write_json(cached_path, row)
                row = {**row, "cached": False}
                on_row(row)
                rows.append(row)
    return rows


# The lead over scratch, at every label count of the pays-check, at which pretraining pays.
PAYS_LEAD = 0.05


def pays_verdict(rows: list[dict], counts=(300, 1000), lead: float = PAYS_LEAD) -> dict:
    """Does the pretrained encoder pay? At every count, its mean accuracy leads scratch's by at least
    `lead` and its worst seed beats scratch's best (beyond the seeds' range)."""
    points = {(point["model"], point["train_reviews"]): point for point in summary(rows)}
    leads = {}
    for count in counts:
        pretrained, scratch = points[("pretrained", count)], points[("scratch", count)]
        leads[count] = {"lead": pretrained["mean"] - scratch["mean"],
                        "beyond_range": pretrained["min"] > scratch["max"],
                        "pretrained": pretrained["mean"], "scratch": scratch["mean"],
                        "bag_of_words": points.get(("bag_of_words", count), {}).get("mean")}
    pays = all(point["lead"] >= lead and point["beyond_range"] for point in leads.values())
    return {"pays": pays, "leads": leads, "lead": lead}


def verdict_line(verdict: dict) -> str:
    """The pays-check in one line: the lead at each count, the bag of words beside it, the verdict."""
    parts = []
    for count, point in verdict["leads"].items():
        words = f", bag of words {point['bag_of_words']:.3f}" if point["bag_of_words"] is not None else ""
        parts.append(f"{count:,} labels {point['lead']:+.3f} (pretrained {point['pretrained']:.3f}, scratch "
                     f"{point['scratch']:.3f}{words}; {'beyond' if point['beyond_range'] else 'within'} the seeds' range)")
    outcome = "PAYS" if verdict["pays"] else "does not pay"
    return f"pays-check: lead over scratch at {'; '.join(parts)} -> {outcome} (needs >= {verdict['lead']:+.2f} at each, beyond the range)"


CSV_NAME, PLOT_NAME = "label_curve.csv", "label_curve.png"


def read_rows(folder: str) -> list[dict]:
    import csv

    with open(os.path.join(folder, CSV_NAME), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write(folder: str, rows: list[dict], title: str) -> None:
    """label_curve.csv (one row per label count, seed and model) and label_curve.png into `folder`."""
    import csv

    with open(os.path.join(folder, CSV_NAME), "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(folder, PLOT_NAME), title)


def curve_dir(run_dir: str) -> str:
    """Where a run's label curve is written: <run_dir>/label_curve/."""
    return os.path.join(run_dir, "label_curve")


LABEL_CURVE_HEADING = "## Sentiment against the number of labels"


def report_section(table: str, image: str) -> str:
    """The report's section on the label curve (label_curve.py): its table and its plot."""
    return "\n".join([LABEL_CURVE_HEADING, "",
                      "Held-out accuracy of the fine-tuned pretrained encoder, the same architecture trained from "
                      "random weights, and a bag of words, each trained on the same class-balanced sample of "
                      "labelled training reviews (mean over seeds, their range in brackets; label_curve.py):", "",
                      table, "", f"![held-out accuracy against labels]({image})", ""])


def refresh_report(run_dir: str) -> None:
    """Put the run's label curve (if it has one) into its report.md."""
    from imdb_bert import artifacts, report

    folder = curve_dir(run_dir)
    if os.path.isfile(os.path.join(folder, artifacts.MANIFEST)):
        report.put_section(run_dir, LABEL_CURVE_HEADING,
                           report_section(markdown_table(read_rows(folder)), os.path.join(os.path.basename(folder), PLOT_NAME)))
