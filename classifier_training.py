"""Stage 5 (optional): fine-tune the pretrained encoder to tell positive from negative reviews.

    python classifier_training.py [--preset P] [--set classifier_epochs=3] [--compare-scratch] [--force]
    python classifier_training.py --dev-only --set classifier_windows=head_tail     (a fine-tuning study row)

Reads the finished run folder of model_training.py (<runs_dir>/<run_name or preset>) and the
labelled reviews of data/prepared: trains on the train split, keeps the epoch that scores best on
the dev split, and scores the validation split (held out, never trained on, never used for a
choice) once, at the end. Writes <run_dir>/classifier/ with classifier.keras,
metrics.json (accuracy, loss and confusion matrix on the held-out reviews), history.csv,
sentiment_export/ (a SavedModel that classifies raw strings; serve it with predict.py) and
manifest.json.

--compare-scratch also trains the same architecture from random weights with the same budget, and
a bag-of-words logistic regression (TF-IDF of words and word pairs), on the same split, so the
metrics show what pretraining buys.

--dev-only is for choosing the classifier_* settings: it fine-tunes the pretrained encoder, picks
the epoch on the dev split, appends one row (the settings, dev accuracy per epoch, time) to
<runs_dir>/fine_tune_study.csv and stops. It never reads the held-out reviews and writes no folder.
(results/fine_tune_study.csv is the fine-tuning study of docs/fine-tuning.md.)
"""

import json
import os
import time

import config as config_module
from imdb_bert import artifacts, pipeline


def main():
    config, options = config_module.load_stage_config(__doc__, flags={
        "compare-scratch": "also train the same architecture from scratch and a bag-of-words baseline",
        "dev-only": "score on the dev split only and append a row to <runs_dir>/fine_tune_study.csv (for choosing settings)"})
    compare = options.compare_scratch
    prepared_manifest = pipeline.current_prepared(config)
    run_manifest = pipeline.current_run(config)
    identity = pipeline.stage_identity(config, pipeline.stage_keys(config, "classifier"), {"run": run_manifest["fingerprint"]})
    identity["config"]["compare_scratch"] = compare   # a comparison run has more to show
    folder = artifacts.classifier_dir(config.run_dir)
    if not options.dev_only and pipeline.skip_if_up_to_date("classifier_training", folder, identity, options.force, config):
        return
    train(config, identity, folder, compare, prepared_manifest["splits"], options.dev_only)


def train(config, identity, folder, compare, splits, dev_only=False):
    import warnings

    import keras

    from imdb_bert import classifier, export, probe, training, vocab
    from imdb_bert.model import ModelConfig, build_masked_lm

    # Length-grouped batches have no known count, so every pass "runs out of data" by design; the
    # encoder's vocabulary bias belongs to the masked-LM head and rightly gets no gradient here.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables .*output_bias")
    prepared = artifacts.prepared_dir(config.data_dir)
    tokens = vocab.read_vocabulary(os.path.join(config.run_dir, "vocab.txt"))
    tokenizer = vocab.make_tokenizer(tokens)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(training.resolve_precision(config.mixed_precision))

    head_tail = config.classifier_windows == "head_tail"
    counts = classifier.labelled_counts(splits)   # data_prep counted each split's labels
    train_windows, dev_windows, held_out_windows = (
        classifier.labelled_review_windows(classifier.labelled_reviews(prepared, split), tokenizer,
                                           config.max_seq_len, config.classifier_max_windows, head_tail)
        for split in classifier.SPLITS)
    print(f"classifier_training: {counts['train']} labelled training reviews, {counts['dev']} dev reviews (pick the "
          f"epoch), {counts['validation']} held-out reviews (the validation split, "
          f"{'not read: --dev-only' if dev_only else 'scored once'}), up to "
          f"{config.classifier_max_windows} windows of {config.max_seq_len} each ({config.classifier_windows})")
    longest = config.classifier_max_windows * config.max_seq_len
    train_data = classifier.batches(train_windows, config.batch_size, longest, shuffle_seed=config.seed)
    dev = classifier.batches(dev_windows, config.batch_size, longest)
    held_out = classifier.batches(held_out_windows, config.batch_size, longest)
    steps_per_epoch = sum(1 for _ in train_data)
    total_steps = steps_per_epoch * config.classifier_epochs

    fine_tuning = pipeline.settings(classifier.FineTuneConfig, config)

    def fit_on_train(name, masked_lm, work):
        """The classifier on the encoder of `masked_lm`, trained with the epoch of the best dev accuracy kept."""
        print(f"classifier_training: {name}: {config.classifier_epochs} epochs x {steps_per_epoch} steps")
        logs = [keras.callbacks.CSVLogger(os.path.join(work, f"history_{name}.csv"))] if work else []
        return classifier.fine_tune(masked_lm, fine_tuning, train_data, dev, config.classifier_epochs,
                                    steps_per_epoch, callbacks=logs)

    if dev_only:
        started = time.time()
        pretrained = probe.load_model(os.path.join(config.run_dir, "model.keras"))
        _, best, dev_accuracies = fit_on_train("pretrained", pretrained, work=None)
        classifier.record_study_row(
            os.path.join(config.runs_dir, "fine_tune_study.csv"),
            {"run": os.path.basename(config.run_dir), "run_fingerprint": identity["inputs"]["run"], "seed": config.seed},
            {key: getattr(config, key) for key in pipeline.stage_keys(config, "classifier")}, best, dev_accuracies, time.time() - started)
        return

    def fine_tune(name, masked_lm, work):
        model, best, _ = fit_on_train(name, masked_lm, work)
        result = classifier.evaluate_picked(model, held_out, best)
        print(f"classifier_training: {name}: epoch {best.best_epoch + 1} picked on dev (accuracy {best.best:.4f}); "
              f"held-out accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}")
        return model, result

    with artifacts.atomic_dir(folder) as work:
        pretrained = probe.load_model(os.path.join(config.run_dir, "model.keras"))
        model, results = fine_tune("pretrained", pretrained, work)
        metrics = {"held_out": "validation split of data/prepared (labelled reviews only)",
                   "train_reviews": counts["train"], "dev_reviews": counts["dev"],
                   "held_out_reviews": counts["validation"],
                   "epochs": config.classifier_epochs, "steps": total_steps,
                   "fine_tuned_pretrained": results}
        if compare:
            keras.utils.set_random_seed(config.seed)
            scratch = build_masked_lm(pipeline.settings(ModelConfig, config, vocab_size=len(tokens)))
            metrics["same_architecture_from_scratch"] = fine_tune("scratch", scratch, work)[1]
            metrics["bag_of_words_logistic_regression"] = classifier.bag_of_words_baseline(prepared)
        model.save(os.path.join(work, "classifier.keras"))
        export.save(export.ClassifyExport(model, tokens, config.max_seq_len, config.classifier_max_windows, head_tail),
                    "classify", os.path.join(work, artifacts.SENTIMENT_EXPORT), max_seq_len=config.max_seq_len,
                    max_windows=config.classifier_max_windows, windows=config.classifier_windows)
        artifacts.write_json(os.path.join(work, "metrics.json"), metrics)
        artifacts.write_manifest(work, "classifier_training", identity)

    print("classifier_training: held-out accuracy (same reviews for every model):")
    for name, result in metrics.items():
        if isinstance(result, dict) and "accuracy" in result:
            (tn, fp), (fn, tp) = result["confusion_matrix"]["counts"]
            print(f"  {name:<36} {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
                  f"confusion [true neg: {tn} right, {fp} wrong; true pos: {tp} right, {fn} wrong]")
    print(f"classifier_training: -> {folder}")
    print(json.dumps(metrics))


if __name__ == "__main__":
    pipeline.run_stage(main)
