"""Stage 4: train the BERT masked-language model and save a run folder.

    python model_training.py [--preset P] [--set epochs=3] [--set run_name=try1] [--force]

Reads <data_dir>/prepared and <data_dir>/vocab/vocab.txt; trains in <run_dir>.inprogress/ and, when
done, writes <runs_dir>/<run_name or preset>/ with model.keras (last epoch), best.keras (best
validation loss), vocab.txt, config.json, history.csv, metrics.json, fill_mask_export/ (a SavedModel
that fills [MASK]s in raw strings; serve it with predict.py) and manifest.json.
After each epoch it prints the top-k fills of the probe phrases; metrics count masked positions only.

A killed run resumes from its last checkpoint (every epoch and every checkpoint_every_steps steps)
when rerun with the same config. A finished run with the same config and inputs is not redone.
"""

import csv
import json
import math
import os
import shutil
import time

import config as config_module
from imdb_bert import artifacts, distribute, vocab


def main():
    config, options = config_module.load_stage_config(__doc__)
    config = distribute.worker_config(config)
    _, training_inputs = vocab.current_training_inputs(config)
    identity = artifacts.stage_identity(config, artifacts.training_keys(config), training_inputs)
    if artifacts.skip_if_up_to_date("model_training", config.run_dir, identity, options.force):
        return
    train(config, identity, options.force)


def train(config, identity, force):
    # TensorFlow is imported only once there is training to do: an up-to-date check takes no time.
    import warnings

    import keras

    from imdb_bert import export, inputs, monitoring, probe, resume, training
    from imdb_bert import model as masked_lm

    # Length-grouped validation batches have no known count, so Keras "runs out of data" at the end
    # of every validation pass by design; the training data repeats forever and cannot run out.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    strategy = distribute.make_strategy(config.strategy)
    print(f"model_training: {distribute.describe(strategy)} (strategy={config.strategy})")

    prepared = artifacts.prepared_dir(config.data_dir)
    tokens = vocab.read_vocabulary(artifacts.vocab_path(config.data_dir))
    tokenizer = vocab.make_tokenizer(tokens)
    for phrase in config.probe_phrases:
        if inputs.MASK_ID not in inputs.encode_with_masks(tokenizer, phrase):
            raise artifacts.StageError(f"probe phrase {phrase!r} has no [MASK]")
    work = resume.work_dir(config.run_dir)
    state = resume.open_work_dir(work, identity, force)

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

    # Batches are grouped by length, so nearly every position trained on is a real token.
    mean_sequence = train_tokens / max(train_count, 1) + 2
    masker = inputs.make_masker(len(tokens), config)
    validation_data = inputs.validation_dataset(validation_windows, len(tokens), config)
    steps_per_epoch = config.steps_per_epoch or max(train_count // config.batch_size, 1)

    with strategy.scope():  # variables, optimizer slots and metrics live on every replica
        model = masked_lm.build_masked_lm(len(tokens), config)
        training.compile_masked_lm(model, config, total_steps=steps_per_epoch * config.epochs)
        if state:
            resume.restore(model, work, state)
        if config.strategy == "multi_worker":
            training.prepare_multi_worker_fit(model, validation_data)
    history_rows = []
    if state:
        history_rows = resume.trim_history(work, state["epoch"])
        print(f"model_training: resuming {work} at epoch {state['epoch'] + 1}, step {state['step']} "
              f"(optimizer step {state['global_step']})")
    else:
        model.summary(line_length=100)

    checkpoint = resume.TrainingCheckpoint(work, config.checkpoint_every_steps)
    callbacks = [training.PerplexityLogger(),
                 *monitoring.training_callbacks(work, tokens_per_step=config.batch_size * mean_sequence),
                 probe.ProbeCallback(tokenizer, tokens, config.probe_phrases, config.top_k, config.max_seq_len),
                 keras.callbacks.CSVLogger(os.path.join(work, resume.HISTORY), append=True),
                 keras.callbacks.TerminateOnNaN(),
                 keras.callbacks.ModelCheckpoint(os.path.join(work, resume.BEST_MODEL), monitor="val_loss",
                                                 save_best_only=True, verbose=0,
                                                 initial_value_threshold=resume.best_validation_loss(work, history_rows)),
                 checkpoint]
    fit_started = time.time()
    for initial_epoch, epochs, steps in resume.fit_plan(state, config.epochs, steps_per_epoch):
        checkpoint.start_at(steps_per_epoch - steps)
        # A fresh input stream per fit call, seeded by the optimizer step, so a resumed run does not
        # replay the batches it already trained on.
        global_step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        train_data = inputs.training_dataset(train_windows, masker, config, seed=config.seed + global_step)
        model.fit(train_data, validation_data=validation_data, initial_epoch=initial_epoch, epochs=epochs,
                  steps_per_epoch=steps, validation_steps=config.validation_batches or None,
                  callbacks=callbacks, verbose=monitoring.fit_verbosity(), shuffle=False)  # tf.data already shuffles
        if checkpoint.nan_epoch is not None:
            raise artifacts.StageError(
                f"training stopped: the loss became NaN in epoch {checkpoint.nan_epoch + 1} (learning_rate "
                f"{config.learning_rate} is likely too high); {work} keeps the last good checkpoint, if any — "
                "rerun with a lower --set learning_rate=... and --force")
    fit_seconds = time.time() - fit_started
    final = model.evaluate(validation_data, return_dict=True, verbose=0)
    copying_accuracy = training.all_positions_accuracy(model, validation_windows, len(tokens), config)
    with open(os.path.join(work, resume.HISTORY), newline="", encoding="utf-8") as handle:
        history_rows = list(csv.DictReader(handle))
    best = min(history_rows, key=lambda row: float(row["val_loss"]))
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    metrics = {
        "validation_masked_accuracy": final["masked_accuracy"],
        "validation_masked_cross_entropy": final["loss"],
        "validation_perplexity": math.exp(final["loss"]),
        "validation_windows": validation_count,
        "train_masked_accuracy": float(history_rows[-1]["masked_accuracy"]),
        "all_positions_accuracy_original_style": copying_accuracy,
        "epochs": len(history_rows), "steps_per_epoch": steps_per_epoch, "optimizer_steps": optimizer_steps,
        "best_epoch": int(best["epoch"]) + 1, "best_val_loss": float(best["val_loss"]),
        "precision": precision, "fit_seconds_this_session": round(fit_seconds, 1),
        "tokens_per_second": round((optimizer_steps - (state or {}).get("global_step", 0)) * config.batch_size
                                   * mean_sequence / fit_seconds, 1) if fit_seconds > 1 else None,
        "probe": [fill for phrase in config.probe_phrases
                  for fill in probe.top_k_fills(model, tokenizer, tokens, phrase, config.top_k, config.max_seq_len)],
    }

    with artifacts.atomic_dir(config.run_dir) as folder:
        model.save(os.path.join(folder, "model.keras"))
        for name in (resume.HISTORY, resume.BEST_MODEL):
            shutil.copy(os.path.join(work, name), os.path.join(folder, name))
        shutil.copytree(os.path.join(work, monitoring.TENSORBOARD_DIR), os.path.join(folder, monitoring.TENSORBOARD_DIR))
        monitoring.save_curves(history_rows, os.path.join(folder, monitoring.CURVES_PNG),
                               f"{os.path.basename(config.run_dir)}: {optimizer_steps} steps, held-out masked "
                               f"accuracy {metrics['validation_masked_accuracy']:.3f}")
        shutil.copy(artifacts.vocab_path(config.data_dir), os.path.join(folder, "vocab.txt"))
        artifacts.write_json(os.path.join(folder, "config.json"), config.as_dict())
        artifacts.write_json(os.path.join(folder, "metrics.json"), metrics)
        export.save(export.FillMaskExport(model, tokens, config.max_seq_len, config.top_k), "fill_mask",
                    os.path.join(folder, "fill_mask_export"), max_seq_len=config.max_seq_len, top_k=config.top_k)
        artifacts.write_manifest(folder, "model_training", identity, vocab_size=len(tokens),
                                 train_windows=train_count, validation_windows=validation_count)
    shutil.rmtree(work)

    print(f"model_training: validation masked-token accuracy {metrics['validation_masked_accuracy']:.4f}, "
          f"perplexity {metrics['validation_perplexity']:.1f} (masked positions only, held-out reviews)")
    print(f"model_training: all-positions token accuracy {copying_accuracy:.4f} — the original's metric, "
          "which counts unmasked tokens the model can copy; for comparison only")
    top = metrics["probe"][0]
    print(f"model_training: probe top-1 {top['predicted mask token']!r} p={top['probability']:.3f}; "
          f"{metrics['epochs']} epochs, {optimizer_steps} steps, best epoch {metrics['best_epoch']} "
          f"-> {config.run_dir}")
    print(json.dumps({key: value for key, value in metrics.items() if key != "probe"}))


if __name__ == "__main__":
    artifacts.run_stage(main)
