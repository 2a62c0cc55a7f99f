"""How much sentiment the frozen encoder holds, layer by layer: a cheap screen of representation quality.

    python3 lab/frozen_probe.py [--preset P] [--labels 2000]

Mean-pools each layer's hidden states over every real token of a review (the run's encoder, not
trained further), fits a logistic regression on a class-balanced sample of --labels labelled
training reviews (the same sample for every run), and scores it on 2,000 labelled dev reviews (class-balanced); the same for an encoder of
the same shape with random weights (the floor). Reads no held-out review. Prints one line per layer
and appends one row per encoder to <runs_dir>/frozen_probe.csv.
"""

import os
import sys
import time

# The lab imports the product (config.py, imdb_bert/) from the repository root, never the reverse.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config as config_module  # noqa: E402
from imdb_bert import artifacts, pipeline  # noqa: E402


def main():
    config, options = config_module.load_stage_config(__doc__, options={
        "labels": ("labelled training reviews the logistic regression is fitted on", "2000")})
    if not options.labels.isdigit() or int(options.labels) < 2:
        raise config_module.ConfigError(f"--labels takes a number of at least 2, got {options.labels!r}")
    run_manifest = pipeline.current_run(config)

    import keras

    from imdb_bert import probe, training, vocab
    from lab import linear_probe
    from imdb_bert.model import BertEncoder, ModelConfig

    keras.mixed_precision.set_global_policy(training.resolve_precision(config.mixed_precision))
    started = time.time()
    prepared = artifacts.prepared_dir(config.data_dir)
    tokens = vocab.read_vocabulary(os.path.join(config.run_dir, "vocab.txt"))
    tokenizer = vocab.make_tokenizer(tokens)
    train, dev = linear_probe.review_sets(prepared, tokenizer, int(options.labels), config.max_seq_len,
                                          config.classifier_max_windows, config.classifier_windows == "head_tail",
                                          config.batch_size)
    keras.utils.set_random_seed(config.seed)
    encoders = {"pretrained": probe.load_model(os.path.join(config.run_dir, "model.keras")).encoder,
                "random init": BertEncoder(pipeline.settings(ModelConfig, config, vocab_size=len(tokens)))}
    for name, encoder in encoders.items():
        accuracies = linear_probe.probe(encoder, train, dev)
        for layer, accuracy in accuracies.items():
            print(f"frozen_probe: {name:<11} {layer:<18} dev accuracy {accuracy:.4f}")
        best, best_accuracy = linear_probe.best(accuracies)
        artifacts.append_row(os.path.join(config.runs_dir, "frozen_probe.csv"), {
            "run": os.path.basename(config.run_dir), "run_fingerprint": run_manifest["fingerprint"], "encoder": name,
            "labels": int(options.labels), "dev_reviews": linear_probe.DEV_REVIEWS, "best_layer": best,
            "best_dev_accuracy": round(best_accuracy, 4),
            "dev_accuracy_per_layer": " ".join(f"{layer}={value:.4f}" for layer, value in accuracies.items()),
            "date": time.strftime("%Y-%m-%d")})
    print(f"frozen_probe: {time.time() - started:.0f}s -> {os.path.join(config.runs_dir, 'frozen_probe.csv')}")


if __name__ == "__main__":
    pipeline.run_stage(main)
