"""The pretraining recipe study: variants of the cpu recipe trained for the same minutes (the
training stage's wall clock, as in model_training.py) and scored on the dev split, so that the choice never looks at the held-out reviews.

    python3 lab/study.py baseline mask25 linear --minutes 5 --seeds 1 2 3     train and score, one row each
    python3 lab/study.py --table                                              mean and spread per variant
    python3 lab/study.py --list                                               the variants and their settings
    python3 lab/study.py baseline seq64 --minutes 12 --seeds 1 --keep         also keep each run for evaluate.py
    python3 lab/study.py seq128 seq64to128 --score-seq-len 64                 score other window lengths on 64-token windows

A variant is a few `--set`s on top of the recipe under study (default: the cpu preset; `--preset`
and `--set` change it as in every stage). Each run trains like model_training.py (same steps, same
time budget) in <runs_dir>/study/, is scored under evaluate.py's fixed protocol (15% masked,
80/10/10, fixed seed) on the first DEV_WINDOWS windows of the dev split and by the frozen-encoder
probe (lab/linear_probe.py: the best layer's dev accuracy), and appends one row to
results/study.csv as soon as it ends; its folder is then deleted, unless --keep: then the run is
finished as model_training.py finishes one (held-out metrics, report, exports) in
<runs_dir>/study/<variant>-s<seed>, for `evaluate.py --compare` of the final figures (the choice
is the dev row's). Needs the prepared data and the vocabulary of that config (./run_pipeline.sh
makes both). A run shorter than the recipe's train_minutes warms up over the same share of its
time (warmup_steps scaled by minutes / train_minutes), so a 5-minute screen of the 15-minute cpu
recipe has the same schedule shape.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time

# The lab imports the product (config.py, imdb_bert/) from the repository root, never the reverse.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config as config_module  # noqa: E402
from imdb_bert import artifacts, pipeline  # noqa: E402

RESULTS = os.path.join("results", "study.csv")
DEV_WINDOWS = 2000
COLUMNS = ["variant", "recipe", "seed", "minutes", "steps", "dev_seq_len", "dev_masked_accuracy", "dev_perplexity",
           "probe_top1", "probe_p", "settings", "date", "frozen_probe_dev", "frozen_probe_layer"]
FROZEN_PROBE_LABELS = 2000   # labelled training reviews the frozen probe is fitted on (--probe-labels)
# Changes to the cpu recipe under study ("Cramming", Geiping & Goldstein 2022, for most of them); none of
# them builds the recipe itself (that is "baseline").
# Batch-size variants scale the peak rate with the square root of the batch.
VARIANTS = {
    "baseline": {},
    "mask15": {"mask_rate": "0.15"}, "mask20": {"mask_rate": "0.2"}, "mask25": {"mask_rate": "0.25"},
    "mask_only": {"mask_token_rate": "1.0", "random_token_rate": "0.0"},
    "whole_word": {"whole_word_masking": "true"},
    "cosine": {"lr_schedule": "cosine"},
    "lr1e-3": {"learning_rate": "1e-3"},
        "warmup150": {"warmup_steps": "150"},
    "lr4e-3": {"learning_rate": "4e-3"},
    "4L128": {"num_layers": "4"},
    "2L256": {"hidden_size": "256", "ffn_size": "1024"},
    "3L192": {"num_layers": "3", "hidden_size": "192", "ffn_size": "768"},
    "seq128": {"max_seq_len": "128"},
    # BERT's two-length schedule, scaled: 90% of the time on 64-token windows, then 128.
    "seq64to128": {"max_seq_len": "128", "short_seq_len": "64", "short_seq_share": "0.9"},
    "batch64": {"batch_size": "64", "learning_rate": "2e-3"},
    "batch128": {"batch_size": "128", "learning_rate": "2.83e-3"},
    "dropout0.1": {"dropout": "0.1"},
    "no_bias": {"use_bias": "false"},
}


def train_and_score(preset: str, overrides: dict, variant: str, seed: int, minutes: float, keep: bool = False,
                    score_seq_len: int = 0, probe_labels: int = FROZEN_PROBE_LABELS) -> dict:
    """One run of `variant` on top of the recipe `preset` + `overrides` (in this process): train for
    `minutes`, score on the dev split cut into windows of `score_seq_len` tokens (default: the run's
    own max_seq_len; runs of different window lengths answer the same questions at a common one)."""
    from imdb_bert import evaluation, inputs, pretraining, probe, report
    from lab import linear_probe

    recipe_minutes = config_module.make_config(preset, overrides).train_minutes or minutes
    recipe = config_module.make_config(preset, {**overrides, **VARIANTS[variant], "train_minutes": str(recipe_minutes)})
    # A shorter run keeps the recipe's shape: warm-up over the same share of the steps.
    share = minutes / recipe_minutes
    config = config_module.make_config(preset, {**overrides, **VARIANTS[variant], "seed": str(seed),
                                                "train_minutes": str(minutes),
                                                "warmup_steps": str(max(round(recipe.warmup_steps * share), 1)),
                                                "runs_dir": os.path.join(recipe.runs_dir, "study"),
                                                "run_name": f"{variant}-s{seed}"})
    score_seq_len = score_seq_len or config.max_seq_len
    if score_seq_len > config.max_seq_len:
        raise config_module.ConfigError(f"--score-seq-len {score_seq_len} is longer than the {variant} run's "
                                        f"max_seq_len {config.max_seq_len}")
    run = pretraining.start(config, pipeline.training_identity(config), force=True)
    pretraining.build(run)
    pretraining.fit(run, whole_stage=False)   # equal training time; the scoring below is outside it
    dev_windows = run.dev_windows if score_seq_len == config.max_seq_len else inputs.window_dataset(
        artifacts.prepared_dir(config.data_dir), "dev", run.tokenizer, score_seq_len)
    scores = evaluation.masked_token_scores(run.model, dev_windows.take(DEV_WINDOWS), len(run.tokens),
                                            score_seq_len, config.batch_size)
    top = probe.top_k_fills(run.model, run.tokenizer, run.tokens, config.probe_phrases[0], 1, config.max_seq_len)[0]
    # How much sentiment the encoder's layers hold, frozen: a screen of what it will be worth downstream.
    layer, frozen_accuracy = linear_probe.best(linear_probe.probe(run.model.encoder, *linear_probe.review_sets(
        artifacts.prepared_dir(config.data_dir), run.tokenizer, probe_labels, config.max_seq_len,
        config.classifier_max_windows, config.classifier_windows == "head_tail", config.batch_size)))
    if keep:
        pretraining.publish(run, pretraining.evaluate(run, config_module.PRESET_VOCAB_SIZES),
                            report.read_references(config_module.REFERENCES_CSV))
    else:
        shutil.rmtree(run.work)
    return {"variant": variant, "recipe": " ".join([preset, *(f"{k}={v}" for k, v in overrides.items())]), "seed": seed, "minutes": minutes,
            "steps": int(run.model.optimizer.iterations.numpy()), "dev_seq_len": score_seq_len,
            "dev_masked_accuracy": round(scores["masked_accuracy"], 4), "dev_perplexity": round(scores["perplexity"], 1),
            "probe_top1": top["predicted mask token"], "probe_p": round(top["probability"], 3),
            "settings": " ".join(f"{key}={value}" for key, value in VARIANTS[variant].items()) or "the recipe",
            "date": time.strftime("%Y-%m-%d"), "frozen_probe_dev": round(frozen_accuracy, 4), "frozen_probe_layer": layer}


def table(path: str) -> str:
    """Mean, spread and count of the dev accuracy per (recipe, variant, minutes), best first."""
    if not os.path.isfile(path):
        raise artifacts.StageError(f"no results yet in {path}: run python3 lab/study.py VARIANT first")
    with open(path, newline="", encoding="utf-8") as handle:
        return table_of(list(csv.DictReader(handle)))


def table_of(rows: list[dict]) -> str:
    """The table of `table` for rows already read (lab/render.py renders docs from them)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], float(row["minutes"]), int(row["dev_seq_len"]), row["variant"]), []).append(row)
    lines = ["| recipe | minutes | dev windows | variant | seeds | steps | dev masked acc (mean) | min–max | "
             "frozen probe, dev (mean) | probe top-1 (p) | settings |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (recipe, minutes, length, variant), group in sorted(groups.items(),
                                                            key=lambda item: (item[0][:3], -mean(item[1]))):
        accuracies = [float(row["dev_masked_accuracy"]) for row in group]
        lines.append(f"| {recipe} | {minutes:g} | {length} | {variant} | {len(group)} | {round(mean(group, 'steps'))} | "
                     f"{mean(group):.4f} | "
                     f"{min(accuracies):.4f}–{max(accuracies):.4f} | {frozen_mean(group)} | "
                     + ", ".join(f"{row['probe_top1']} ({row['probe_p']})" for row in group)
                     + f" | {group[0]['settings']} |")
    return "\n".join(lines)


def frozen_mean(rows: list[dict]) -> str:
    """Mean frozen-probe dev accuracy of the rows that have one (rows from before the probe have none)."""
    values = [float(row["frozen_probe_dev"]) for row in rows if row.get("frozen_probe_dev")]
    return f"{sum(values) / len(values):.4f}" if values else "—"


def mean(rows: list[dict], key: str = "dev_masked_accuracy") -> float:
    return sum(float(row[key]) for row in rows) / len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help=f"any of: {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of the training stage per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--score-seq-len", type=int, default=0, metavar="N",
                        help="score on dev windows of N tokens (default: each run's max_seq_len)")
    parser.add_argument("--probe-labels", type=int, default=FROZEN_PROBE_LABELS, metavar="N",
                        help="labelled training reviews the frozen-encoder probe is fitted on")
    parser.add_argument("--results", default=RESULTS, help=f"the CSV rows are appended to (default {RESULTS})")
    config_module.add_config_arguments(parser)
    parser.add_argument("--table", action="store_true", help="print the table of results/study.csv")
    parser.add_argument("--list", action="store_true", help="print the variants")
    parser.add_argument("--keep", action="store_true",
                        help="finish each run as model_training.py does (held-out metrics) and keep its folder")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # a single run, in this process
    arguments = parser.parse_args()
    arguments.preset = arguments.preset or "cpu"   # the recipe under study, whatever the machine
    base = config_module.config_from_args(arguments)   # refuses a bad --set in one line
    overrides = dict(item.split("=", 1) for item in arguments.overrides)
    if arguments.list:
        for name, values in VARIANTS.items():
            print(f"{name:<14} {values or 'the cpu preset'}")
    unknown = [name for name in arguments.variants if name not in VARIANTS]
    if unknown:
        raise config_module.ConfigError(f"unknown variant {unknown[0]!r}; python3 lab/study.py --list shows them")
    if arguments.minutes <= 0:
        raise config_module.ConfigError(f"--minutes must be positive, got {arguments.minutes}")
    if arguments.one:
        row = train_and_score(base.preset, overrides, arguments.variants[0], arguments.seeds[0], arguments.minutes,
                              arguments.keep, arguments.score_seq_len, arguments.probe_labels)
        artifacts.append_row(arguments.results, {column: row[column] for column in COLUMNS})
        print(f"study: {row}")
        return
    for variant in arguments.variants:
        for seed in arguments.seeds:
            # One process per run: nothing (graphs, caches, the global dtype policy) leaks between runs.
            child = subprocess.run([sys.executable, __file__, "--one", variant, "--seeds", str(seed),
                                    "--minutes", str(arguments.minutes), "--results", arguments.results,
                                    "--score-seq-len", str(arguments.score_seq_len),
                                    "--probe-labels", str(arguments.probe_labels),
                                    *(["--keep"] if arguments.keep else []),
                                    "--preset", base.preset, *(f"--set={item}" for item in arguments.overrides)])
            if child.returncode:
                raise artifacts.StageError(f"the {variant} run (seed {seed}) failed (exit {child.returncode}); "
                                           f"the rows before it are in {arguments.results}")
    if arguments.table or arguments.variants:
        print(table(arguments.results))


if __name__ == "__main__":
    pipeline.run_stage(main)
