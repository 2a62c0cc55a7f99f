"""Stage 4: train the BERT masked-language model and save a run folder.

    python model_training.py [--preset P] [--set epochs=3] [--set run_name=try1]

Reads <data_dir>/prepared and <data_dir>/vocab/vocab.txt; writes <runs_dir>/<run_name or preset>/
with model.keras, vocab.txt, config.json, history.csv, metrics.json and manifest.json.
After each epoch it prints the top-k fills of the probe phrases; metrics count masked positions only.
"""

import json
import math
import os
import shutil
import time
import warnings

import config as config_module
from imdb_bert import artifacts, inputs, probe, training, vocab
from imdb_bert import model as masked_lm


def main():
    config = config_module.load_stage_config(__doc__)

    import keras

    # Length-grouped validation batches have no known count, so Keras "runs out of data" at the end
    # of every validation pass by design; the training data repeats forever and cannot run out.
    warnings.filterwarnings("ignore", message="Your input ran out of data")

    prepared = artifacts.prepared_dir(config.data_dir)
    artifacts.read_manifest(prepared, "run: python data_prep.py")
    vocab_manifest = artifacts.read_manifest(artifacts.vocab_dir(config.data_dir), "run: python tokeniser_build.py")
    if vocab_manifest["target_vocab_size"] != config.vocab_size:
        raise artifacts.StageError(
            f"the vocab was built for vocab_size {vocab_manifest['target_vocab_size']} but config says "
            f"{config.vocab_size}: rerun python tokeniser_build.py with this config")
    tokens = vocab.read_vocabulary(artifacts.vocab_path(config.data_dir))
    tokenizer = vocab.make_tokenizer(tokens)
    for phrase in config.probe_phrases:
        if inputs.MASK_ID not in inputs.encode_with_masks(tokenizer, phrase):
            raise artifacts.StageError(f"probe phrase {phrase!r} has no [MASK]")

    keras.utils.set_random_seed(config.seed)
    precision = training.resolve_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    print(f"model_training: precision {precision} (mixed_precision={config.mixed_precision})")
    started = time.time()
    train_windows = inputs.window_dataset(prepared, "train", tokenizer, config.max_seq_len)
    validation_windows = inputs.window_dataset(prepared, "validation", tokenizer, config.max_seq_len)
    train_count, train_tokens = training.count_tokens(train_windows)
    validation_count, validation_tokens = training.count_tokens(validation_windows)
    print(f"model_training: {train_count} training windows ({train_tokens} word pieces), "
          f"{validation_count} validation windows ({validation_tokens}); tokenised in {time.time() - started:.1f}s")

    masker = inputs.make_masker(len(tokens), config)
    train_data = inputs.training_dataset(train_windows, masker, config)
    validation_data = inputs.validation_dataset(validation_windows, len(tokens), config)
    steps_per_epoch = config.steps_per_epoch or max(train_count // config.batch_size, 1)

    model = masked_lm.build_masked_lm(len(tokens), config)
    training.compile_masked_lm(model, config, total_steps=steps_per_epoch * config.epochs)
    model.summary(line_length=100)

    run_dir = config.run_dir
    with artifacts.atomic_dir(run_dir) as folder:
        probe_callback = probe.ProbeCallback(tokenizer, tokens, config.probe_phrases, config.top_k,
                                             config.max_seq_len)
        callbacks = [training.PerplexityLogger(), probe_callback,
                     keras.callbacks.CSVLogger(os.path.join(folder, "history.csv"))]
        fit_started = time.time()
        history = model.fit(train_data, validation_data=validation_data, epochs=config.epochs,
                            steps_per_epoch=steps_per_epoch, validation_steps=config.validation_batches or None,
                            callbacks=callbacks, verbose=2, shuffle=False)  # tf.data already shuffles
        fit_seconds = time.time() - fit_started
        final = model.evaluate(validation_data, return_dict=True, verbose=0)

        copying_accuracy = training.all_positions_accuracy(model, validation_windows, len(tokens), config)
        # Batches are grouped by length, so nearly every position trained on is a real token.
        mean_sequence = train_tokens / max(train_count, 1) + 2
        trained_tokens = steps_per_epoch * config.epochs * config.batch_size * mean_sequence
        metrics = {
            "validation_masked_accuracy": final["masked_accuracy"],
            "validation_masked_cross_entropy": final["masked_cross_entropy"],
            "validation_perplexity": math.exp(final["masked_cross_entropy"]),
            "validation_windows": validation_count,
            "train_masked_accuracy": history.history["masked_accuracy"][-1],
            "all_positions_accuracy_original_style": copying_accuracy,
            "epochs": len(history.history["loss"]), "steps_per_epoch": steps_per_epoch,
            "fit_seconds": round(fit_seconds, 1), "precision": precision,
            "tokens_per_second": round(trained_tokens / fit_seconds, 1),
            "probe": probe_callback.last_fills,
        }
        model.save(os.path.join(folder, "model.keras"))
        shutil.copy(artifacts.vocab_path(config.data_dir), os.path.join(folder, "vocab.txt"))
        artifacts.write_json(os.path.join(folder, "config.json"), config.as_dict())
        artifacts.write_json(os.path.join(folder, "metrics.json"), metrics)
        artifacts.write_manifest(folder, "model_training", vocab_size=len(tokens),
                                 train_windows=train_count, validation_windows=validation_count,
                                 config=config.as_dict())

    print(f"model_training: validation masked-token accuracy {metrics['validation_masked_accuracy']:.4f}, "
          f"perplexity {metrics['validation_perplexity']:.1f} (masked positions only, held-out reviews)")
    print(f"model_training: all-positions token accuracy {copying_accuracy:.4f} — the original's metric, "
          "which counts unmasked tokens the model can copy; for comparison only")
    top = metrics["probe"][0]
    print(f"model_training: probe top-1 {top['predicted mask token']!r} p={top['probability']:.3f}; "
          f"trained {fit_seconds / 60:.1f} min -> {run_dir}")
    print(json.dumps({key: value for key, value in metrics.items() if key != "probe"}))


if __name__ == "__main__":
    artifacts.run_stage(main)
