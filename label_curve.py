"""Where pretraining pays: fine-tuned sentiment accuracy against the number of labelled reviews.

    python label_curve.py [--preset P] [--labels 100,300,1000,3000,all] [--seeds 3] [--windows 8] [--passes 6000] [--force]
    python label_curve.py --dev-only --labels 300,1000 --models pretrained,scratch --set classifier_encoder_rate=0.1

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
"""

import os
import time

import config as config_module
from imdb_bert import artifacts, label_efficiency, pipeline


def main():
    config, options = config_module.load_stage_config(__doc__, options={
        "labels": ("label counts, separated by commas ('all': every labelled training review)", "100,300,1000,3000,all"),
        "seeds": ("seeds at label counts up to 1,000", "3"),
        "first-seed": ("the first sample and initialisation seed (default: the config's seed, so an encoder "
                       "pretrained with another seed can be fine-tuned on the same samples)", ""),
        "models": ("which models, separated by commas", ",".join(label_efficiency.MODELS)),
        "windows": ("windows of max_seq_len each review is read as (default: the config's classifier_max_windows, "
                    "as classifier_training.py reads it)", ""),
        "passes": ("reviews each model reads in all (an epoch is an eighth of them, at least the sample)",
                   str(label_efficiency.CurvePlan.review_passes))},
        flags={"dev-only": "score on dev reviews, append rows to <runs_dir>/label_curve_study.csv (for choosing settings)"})
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
    identity = pipeline.stage_identity(config, pipeline.CLASSIFIER_KEYS, {"run": run_manifest["fingerprint"]})
    identity["config"].update(labels=[str(count) for count in counts], seeds=list(plan.seeds), models=list(models),
                              windows=windows, passes=passes)
    folder = artifacts.label_curve_dir(config.run_dir)
    if not options.dev_only and pipeline.skip_if_up_to_date("label_curve", folder, identity, options.force):
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
        print(f"label_curve: {row['labels']} labels ({row['train_reviews']} reviews), seed {row['seed']}, "
              f"{row['model']}: {row['scored_on']} {row['accuracy']:.4f} (epoch picked on dev: {row['dev_accuracy']:.4f}, epoch "
              f"{row['epoch_picked']}/{row['epochs']} of {row['passes_per_epoch']} pass(es)), {row['seconds']:.0f}s",
              flush=True)

    rows = label_efficiency.measure(plan, pipeline.settings(classifier.FineTuneConfig, config),
                               artifacts.prepared_dir(config.data_dir), os.path.join(config.run_dir, "model.keras"),
                               tokens, pipeline.settings(ModelConfig, config, vocab_size=len(tokens)), progress)
    if options.dev_only:
        study = os.path.join(config.runs_dir, "label_curve_study.csv")
        for row in rows:
            artifacts.append_row(study, {"run": os.path.basename(config.run_dir), "run_fingerprint": run_manifest["fingerprint"],
                                         **{key: getattr(config, key) for key in pipeline.CLASSIFIER_KEYS},
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


if __name__ == "__main__":
    pipeline.run_stage(main)
