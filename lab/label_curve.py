"""Where pretraining pays: fine-tuned sentiment accuracy against the number of labelled reviews.

    python3 lab/label_curve.py [--preset P] [--labels 100,300,1000,3000,all] [--seeds 3] [--windows 8] [--passes 6000] [--force]
    python3 lab/label_curve.py --dev-only --labels 300,1000 --models pretrained,scratch --set classifier_learning_rate=1.5e-3

For each label count, a class-balanced sample of the labelled training reviews (seeded; a seed's
smaller samples are part of its larger ones) trains three models: the run's pretrained encoder
fine-tuned with the classifier_* settings, the same architecture from random weights, and a bag of
words. Counts up to 1,000 use --seeds seeds (sample and initialisation), larger ones the first
seed. A review is read as up to --windows windows of max_seq_len from its start (by default as many
as classifier_training.py reads, classifier_max_windows: 8 at the cpu preset, chosen on dev over
2: docs/transfer.md). A model reads about --passes reviews in all: an epoch is the sample repeated
to at least an eighth of them, with enough epochs for the rest (between classifier_epochs and 8;
6,000 by default, chosen on dev over 2,000); the epoch kept is the best on the 500 labelled dev
reviews (a class-balanced sample: the splits are stored grouped by label), and the held-out
reviews are scored once per model. Writes
<run_dir>/label_curve/ (label_curve.csv, label_curve.png, manifest.json) and adds the table and the
plot to the run's report.md.

--dev-only is for choosing the classifier_* settings at few labels: the same points, scored on the
other labelled dev reviews instead of the held-out ones (never read), one row each
appended to <runs_dir>/label_curve_study.csv with the settings; no folder is written.

--pays is the quick check of whether an encoder pays: 300 and 1,000 labels, 3 seeds, every model,
and one verdict line (the lead over scratch at each count must be at least 0.05 and beyond the
seeds' range), appended as one row to --rows (default results/pays_check.csv). The fits that do not
read the pretrained encoder (scratch, bag of words) are kept in <runs_dir>/fit_cache/ under a hash
of what they depend on (shape, fine-tuning settings, sample, data, vocabulary) and reused, so
screening another encoder of the same shape costs only its own three fits per count.
"""

import os
import sys
import time

# The lab imports the product (config.py, imdb_bert/) from the repository root, never the reverse.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config as config_module  # noqa: E402
from imdb_bert import artifacts, pipeline  # noqa: E402
from lab import label_efficiency  # noqa: E402


DEFAULT_LABELS = "100,300,1000,3000,all"


def main():
    config, options = config_module.load_stage_config(__doc__, options={
        "labels": ("label counts, separated by commas ('all': every labelled training review)", DEFAULT_LABELS),
        "seeds": ("seeds at label counts up to 1,000", "3"),
        "first-seed": ("the first sample and initialisation seed (default: the config's seed, so an encoder "
                       "pretrained with another seed can be fine-tuned on the same samples)", ""),
        "models": ("which models, separated by commas", ",".join(label_efficiency.MODELS)),
        "windows": ("windows of max_seq_len each review is read as (default: the config's classifier_max_windows, "
                    "as classifier_training.py reads it)", ""),
        "passes": ("reviews each model reads in all (an epoch is an eighth of them, at least the sample)",
                   str(label_efficiency.CurvePlan.review_passes)),
        "rows": ("with --pays: the CSV its summary row is appended to", os.path.join("results", "pays_check.csv"))},
        flags={"dev-only": "score on dev reviews, append rows to <runs_dir>/label_curve_study.csv (for choosing settings)",
               "pays": "the pays-check: 300 and 1,000 labels, 3 seeds, every model, cached scratch fits, one verdict line"})
    if options.pays:   # its own label counts unless --labels names others (the tests' few reviews)
        options.labels = "300,1000" if options.labels == DEFAULT_LABELS else options.labels
        options.models = ",".join(label_efficiency.MODELS)
    try:
        counts = label_efficiency.parse_counts(options.labels)
        seeds, passes = int(options.seeds), int(options.passes)
        windows = int(options.windows) if options.windows else config.classifier_max_windows
        first_seed = int(options.first_seed) if options.first_seed else config.seed
        models = tuple(name.strip() for name in options.models.split(","))
        if min(seeds, windows, passes) < 1:
            raise ValueError(f"--seeds, --windows and --passes take positive numbers, got {options.seeds!r}, "
                             f"{options.windows!r} and {options.passes!r}")
        if not models or set(models) - set(label_efficiency.MODELS):
            raise ValueError(f"--models takes some of {', '.join(label_efficiency.MODELS)}; got {options.models!r}")
    except ValueError as error:
        raise config_module.ConfigError(str(error)) from None
    run_manifest = pipeline.current_run(config)
    plan = label_efficiency.CurvePlan(counts=tuple(counts), seeds=tuple(first_seed + index for index in range(seeds)),
                                 models=models, dev_only=options.dev_only, max_windows=windows, review_passes=passes,
                                 **{key: getattr(config, key) for key in label_efficiency.PLAN_KEYS})
    identity = pipeline.stage_identity(config, pipeline.stage_keys(config, "classifier"), {"run": run_manifest["fingerprint"]})
    identity["config"].update(labels=[str(count) for count in counts], seeds=list(plan.seeds), models=list(models),
                              windows=windows, passes=passes)
    folder = label_efficiency.curve_dir(config.run_dir)
    if not options.dev_only and pipeline.skip_if_up_to_date("label_curve", folder, identity, options.force, config):
        return

    import keras

    from imdb_bert import classifier, training, vocab
    from imdb_bert.model import ModelConfig

    keras.mixed_precision.set_global_policy(training.resolve_precision(config.mixed_precision))
    tokens = vocab.read_vocabulary(os.path.join(config.run_dir, "vocab.txt"))
    print(f"label_curve: {', '.join(map(str, counts))} labels; seeds {list(plan.seeds)} up to {plan.few_labels} labels, "
          f"{plan.seeds[0]} above; epoch picked on {plan.dev_reviews} labelled dev reviews (class-balanced); scored on "
          + ("the other dev reviews (--dev-only)" if plan.dev_only else "the held-out reviews, once per model"))

    def progress(row):
        picked = (f"epoch picked on dev: {row['dev_accuracy']:.4f}, epoch {row['epoch_picked']}/{row['epochs']} of "
                  f"{row['passes_per_epoch']} pass(es)" if row["epochs"] else f"dev: {row['dev_accuracy']:.4f}")
        print(f"label_curve: {row['labels']} labels ({row['train_reviews']} reviews), seed {row['seed']}, "
              f"{row['model']}: {row['scored_on']} {row['accuracy']:.4f} ({picked}), "
              + ("reused from the fit cache" if row.get("cached") else f"{row['seconds']:.0f}s"),
              flush=True)

    started = time.time()
    rows = label_efficiency.measure(plan, pipeline.settings(classifier.FineTuneConfig, config),
                               artifacts.prepared_dir(config.data_dir), os.path.join(config.run_dir, "model.keras"),
                               tokens, pipeline.settings(ModelConfig, config, vocab_size=len(tokens)), progress,
                               fit_cache=os.path.join(config.runs_dir, "fit_cache") if options.pays else None,
                               inputs=run_manifest.get("inputs", {}))
    if options.pays:
        record_pays(config, options, run_manifest, plan, rows, time.time() - started)
    if options.dev_only:
        study = os.path.join(config.runs_dir, "label_curve_study.csv")
        for row in rows:
            artifacts.append_row(study, {"run": os.path.basename(config.run_dir), "run_fingerprint": run_manifest["fingerprint"],
                                         **{key: getattr(config, key) for key in pipeline.stage_keys(config, "classifier")},
                                         "windows": windows, **row,
                                         "date": time.strftime("%Y-%m-%d")})
        print(label_efficiency.markdown_table(rows))
        print(f"label_curve: dev-only rows -> {study}")
        return
    with artifacts.atomic_dir(folder) as work:
        label_efficiency.write(work, rows, f"run {os.path.basename(config.run_dir)}: sentiment against labels")
        artifacts.write_manifest(work, "label_curve", identity)
    label_efficiency.refresh_report(config.run_dir)
    print(label_efficiency.markdown_table(rows))
    print(f"label_curve: -> {folder} (and its report.md)")


def record_pays(config, options, run_manifest, plan, rows, seconds) -> None:
    """Print the pays-check's verdict line and append its summary row to --rows."""
    import json

    from imdb_bert import distribute
    from lab import label_efficiency

    verdict = label_efficiency.pays_verdict(rows, [count for count in plan.counts if count != "all"])
    print(f"label_curve: {label_efficiency.verdict_line(verdict)}")
    with open(os.path.join(config.run_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    row = {"run": os.path.basename(config.run_dir), "run_fingerprint": run_manifest["fingerprint"],
           "optimizer_steps": metrics.get("optimizer_steps"), "train_minutes": config.train_minutes,
           "held_out_masked_accuracy": round(metrics["validation_masked_accuracy"], 4),
           "scored_on": label_efficiency.SCORED_ON[plan.dev_only].split(" ")[0]}
    for count, point in verdict["leads"].items():
        row.update({f"pretrained_{count}": round(point["pretrained"], 4), f"scratch_{count}": round(point["scratch"], 4),
                    f"bag_of_words_{count}": round(point["bag_of_words"], 4), f"lead_{count}": round(point["lead"], 4),
                    f"beyond_range_{count}": point["beyond_range"]})
    # The fine-tuning settings that differ from the preset's, so rows of a rate screen tell apart.
    preset = config_module.make_config(config.preset)
    row["fine_tuning"] = " ".join(f"{key}={getattr(config, key)}" for key in pipeline.stage_keys(config, "classifier")
                                  if getattr(config, key) != getattr(preset, key))
    row.update(pays=verdict["pays"], fits=len(rows), cached_fits=sum(bool(r.get("cached")) for r in rows),
               seconds=round(seconds), cpu=distribute.cpu_description(), date=time.strftime("%Y-%m-%d"))
    artifacts.append_row(options.rows, row)
    print(f"label_curve: pays-check row -> {options.rows}")


if __name__ == "__main__":
    pipeline.run_stage(main)
