"""Stage 4's work in named steps: `start` (data, vocabulary, resume state), `build` (the model on
its devices), `fit`, `evaluate` (held-out numbers) and `publish` (the finished run folder).

Each step takes the `Run` the previous ones filled in. The run trains in `<run_dir>.inprogress/`
(imdb_bert/resume.py) and appears as `<run_dir>/` only once everything in it is written.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field

import keras

from imdb_bert import (artifacts, distribute, evaluation, export, inputs, monitoring, pipeline, private_apis, probe,
                       report, resume, training, vocab)
from imdb_bert.model import ModelConfig, build_masked_lm

TIME_LIMITED_EPOCHS = 100_000
# What a time-limited run keeps back, besides the evaluation, for publishing the run folder (saving the
# model, tracing and saving the fill-mask export, the curves and the report).
PUBLISH_SECONDS = 35.0


@dataclass
class Run:
    """One training run as the steps fill it in."""
    config: object
    identity: dict
    strategy: object = None
    precision: str = ""
    tokens: list = field(default_factory=list)
    tokenizer: object = None
    work: str = ""
    state: dict | None = None
    train_windows: object = None
    short_train_windows: object = None  # the first phase's shorter windows (short_seq_len), if any
    dev_windows: object = None          # per-epoch validation: the choices' split
    validation_windows: object = None   # held out: the final figures only
    counts: dict = field(default_factory=dict)
    masking: object = None
    continuation: list = field(default_factory=list)
    masker: object = None
    dev_data: object = None
    steps_per_epoch: int = 0
    epochs: int = 0
    model: object = None
    fit_seconds: float = 0.0
    origin: float = 0.0                 # time.perf_counter() when the stage started: a time budget's zero
    budget: object = None               # the training.TimeBudget of a time-limited run
    cloze: list = field(default_factory=list)   # the cloze set, when start() built or read it


def start(config, identity: dict, force: bool, cloze_vocab_sizes: list[int] | None = None) -> Run:
    """Devices, precision, vocabulary and tokenised windows; the saved state if resuming. With
    `cloze_vocab_sizes`, the cloze set is built now if it is not yet (once per prepared data), so that
    a time budget counts it before its first step rather than in its final evaluation."""
    # Length-grouped validation batches have no known count, so Keras "runs out of data" at the end
    # of every validation pass by design; the training data repeats forever and cannot run out.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    run = Run(config, identity, strategy=distribute.make_strategy(config.strategy), origin=time.perf_counter())
    print(f"model_training: {distribute.describe(run.strategy)} (strategy={config.strategy})")
    run.tokens = vocab.read_vocabulary(artifacts.vocab_path(config.data_dir))
    run.tokenizer = vocab.make_tokenizer(run.tokens)
    for phrase in config.probe_phrases:
        if inputs.MASK_ID not in inputs.encode_with_masks(run.tokenizer, phrase):
            raise artifacts.StageError(f"probe phrase {phrase!r} has no [MASK]")
    run.work = resume.work_dir(config.run_dir)
    run.state = resume.open_work_dir(run.work, identity, force, config)
    if cloze_vocab_sizes:
        run.cloze = evaluation.ensure_cloze_set(config.data_dir, identity["inputs"]["prepared"], cloze_vocab_sizes,
                                    config.vocab_min_word_count, evaluation.PROTOCOL_SEED)

    keras.utils.set_random_seed(config.seed)
    run.precision = training.resolve_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(run.precision)
    print(f"model_training: precision {run.precision} (mixed_precision={config.mixed_precision}); learning rate "
          f"peak {config.learning_rate:.3g} after {config.warmup_steps} warm-up steps ({config.lr_schedule} schedule"
          + (f" over the stage's {config.train_minutes:g} minutes)" if config.train_minutes else ")"))
    started = time.time()
    prepared = artifacts.prepared_dir(config.data_dir)
    run.train_windows = inputs.window_dataset(prepared, "train", run.tokenizer, config.max_seq_len)
    if config.short_seq_len:
        run.short_train_windows = inputs.window_dataset(prepared, "train", run.tokenizer, config.short_seq_len)
    run.dev_windows = inputs.window_dataset(prepared, "dev", run.tokenizer, config.max_seq_len)
    run.validation_windows = inputs.window_dataset(prepared, "validation", run.tokenizer, config.max_seq_len)
    train_count, train_tokens = training.count_tokens(run.train_windows)
    dev_count, _ = training.count_tokens(run.dev_windows)
    validation_count, _ = training.count_tokens(run.validation_windows)
    run.counts = {"train_windows": train_count, "dev_windows": dev_count, "validation_windows": validation_count,
                  # Batches are grouped by length, so nearly every position trained on is a real token.
                  "mean_sequence": train_tokens / max(train_count, 1) + 2}
    print(f"model_training: {train_count} training windows ({train_tokens} word pieces), {dev_count} dev windows "
          f"(per-epoch checks), {validation_count} held-out validation windows (final figures only); "
          f"tokenised in {time.time() - started:.1f}s")
    run.masking = pipeline.settings(inputs.MaskingConfig, config)
    run.continuation = [token.startswith("##") for token in run.tokens]
    run.masker = inputs.make_masker(len(run.tokens), run.masking, continuation=run.continuation)
    # The per-epoch check: the same first dev_batches x batch_size dev windows each epoch, read to their end.
    checked = run.dev_windows.take(config.dev_batches * config.batch_size) if config.dev_batches else run.dev_windows
    run.dev_data = inputs.validation_dataset(checked, run.masker, config.batch_size, config.max_seq_len, config.seed)
    # A full pass rounded down to whole calls of the train step (steps_per_execution steps each).
    spe = config.steps_per_execution
    run.steps_per_epoch = config.steps_per_epoch or max(train_count // config.batch_size // spe * spe, spe)
    # A time-limited run stops on its clock; `epochs` only caps it.
    run.epochs = TIME_LIMITED_EPOCHS if config.train_minutes else config.epochs
    return run


def build(run: Run) -> None:
    """The masked LM, its optimizer and metrics in the strategy's scope; restored when resuming."""
    config = run.config
    with run.strategy.scope():  # variables, optimizer slots and metrics live on every replica
        run.model = build_masked_lm(pipeline.settings(ModelConfig, config, vocab_size=len(run.tokens)))
        training.compile_masked_lm(run.model, pipeline.settings(training.ScheduleConfig, config),
                                   config.weight_decay, run.steps_per_epoch * run.epochs, config.jit_compile,
                                   config.steps_per_execution)
        if run.state:
            resume.restore(run.model, run.work, run.state)
        elif config.embedding_init == "ppmi_svd":
            start_from_counts(run)
        if config.strategy == "multi_worker":
            private_apis.prepare_multi_worker_fit(run.model, run.dev_data)
    if run.state:
        print(f"model_training: resuming {run.work} at epoch {run.state['epoch'] + 1}, step {run.state['step']} "
              f"(optimizer step {run.state['global_step']})")
    else:
        run.model.summary(line_length=100, expand_nested=True)


def start_from_counts(run: Run) -> None:
    """Replace the random token table by PPMI-SVD vectors of the training windows (count_embeddings)."""
    from imdb_bert import count_embeddings

    started = time.time()
    table = run.model.encoder.token_embedding.embeddings
    values, counted = count_embeddings.ppmi_svd_table(run.train_windows, keras.ops.convert_to_numpy(table),
                                                      count_embeddings.CountEmbeddingConfig(), run.config.seed)
    table.assign(values)
    print(f"model_training: token table from co-occurrence counts ({counted.sum()} of {len(values)} word pieces "
          f"counted) in {time.time() - started:.1f}s")


def fit(run: Run, whole_stage: bool = True) -> None:
    """Train the epochs the run still lacks, checkpointing as it goes; a NaN loss stops it in one line.

    A time-limited run's clock starts with the stage and keeps back the final evaluation and exports;
    with `whole_stage` off (the recipe study, which scores its runs outside the budget) it starts
    with the first step and keeps back only the last epoch's end."""
    config, model = run.config, run.model
    history_rows = resume.trim_history(run.work, run.state["epoch"]) if run.state else []
    budget = None
    if config.train_minutes:
        # The held-out evaluation reads every validation window once, then the all-positions pass (20
        # batches) and the cloze sentences (3,000, about 100 batches' worth).
        final_batches = -(-run.counts["validation_windows"] // config.batch_size) + 120
        budget = run.budget = training.TimeBudget(
            config.train_minutes, config.learning_rate, config.warmup_steps, config.lr_schedule,
            origin=run.origin if whole_stage else None, final_batches=final_batches if whole_stage else 0,
            publish_seconds=PUBLISH_SECONDS if whole_stage else 0.0, dev_batches=config.dev_batches,
            phase_share=config.short_seq_share if config.short_seq_len else 0.0, state=run.state)
    # A time-limited run checkpoints by the clock, so a faster machine does not checkpoint more often.
    checkpoint = resume.TrainingCheckpoint(run.work, 0 if budget else config.checkpoint_every_steps,
                                           every_seconds=60.0 * config.checkpoint_every_minutes if budget else 0.0,
                                           extra_state=budget.state if budget else dict)
    callbacks = [*([budget] if budget else []), training.PerplexityLogger(),
                 *monitoring.training_callbacks(run.work, tokens_per_step=config.batch_size * run.counts["mean_sequence"]),
                 probe.ProbeCallback(run.tokenizer, run.tokens, config.probe_phrases, config.top_k, config.max_seq_len,
                                     os.path.join(run.work, resume.PROBE_HISTORY)),
                 monitoring.HistoryLogger(os.path.join(run.work, resume.HISTORY)),
                 keras.callbacks.TerminateOnNaN(),
                 keras.callbacks.ModelCheckpoint(os.path.join(run.work, resume.BEST_MODEL), monitor="val_loss",
                                                 save_best_only=True, verbose=0,
                                                 initial_value_threshold=resume.best_validation_loss(run.work, history_rows)),
                 checkpoint]
    started = time.time()
    plan = resume.fit_plan(run.state, run.epochs, run.steps_per_epoch)
    while plan:
        initial_epoch, epochs, steps = plan.pop(0)
        checkpoint.start_at(run.steps_per_epoch - steps)
        # Keras keeps one iterator across the epochs of a fit call, so batch i is trained at optimizer
        # step i: a resumed run continues the same stream where the interrupted one stopped.
        global_step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        short = budget is not None and budget.in_first_phase
        windows, length = (run.short_train_windows, config.short_seq_len) if short else (run.train_windows,
                                                                                         config.max_seq_len)
        if config.short_seq_len:
            print(f"model_training: {length}-token windows from optimizer step {global_step}")
        train_data = inputs.training_dataset(windows, run.masker, config.batch_size, length,
                                             seed=config.seed, start_batch=global_step)
        trained = model.fit(train_data, validation_data=run.dev_data, initial_epoch=initial_epoch, epochs=epochs,
                            steps_per_epoch=steps,
                            callbacks=callbacks, verbose=monitoring.fit_verbosity(),
                            shuffle=False)  # tf.data already shuffles
        if checkpoint.nan_epoch is not None:
            raise artifacts.StageError(
                f"training stopped: the loss became NaN in epoch {checkpoint.nan_epoch + 1} (learning_rate "
                f"{config.learning_rate} is likely too high); {run.work} keeps the last good checkpoint, if any — "
                "rerun with a lower --set learning_rate=... and --force")
        if budget and budget.used_up and not budget.phase_ended:
            break
        if short and not budget.in_first_phase and trained.epoch:
            # The short windows' share ended mid-epoch, and that epoch with it: go on with full windows.
            plan = [(trained.epoch[-1] + 1, run.epochs, run.steps_per_epoch)]
    run.fit_seconds = time.time() - started


def history(run: Run) -> list[dict]:
    with open(os.path.join(run.work, resume.HISTORY), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def evaluate(run: Run, cloze_vocab_sizes: list[int]) -> dict:
    """metrics.json: the held-out scores of evaluate.py (fixed-protocol masked tokens over the whole
    validation split, word-level cloze), the run's course, and the probe's final fills."""
    config, model = run.config, run.model
    cloze = run.cloze or evaluation.ensure_cloze_set(config.data_dir, run.identity["inputs"]["prepared"],
                                                     cloze_vocab_sizes, config.vocab_min_word_count,
                                                     evaluation.PROTOCOL_SEED)
    scores = evaluation.scores_of(model, run.tokenizer, run.tokens, run.validation_windows, cloze,
                                  config.max_seq_len, config.batch_size)
    copying = training.all_positions_accuracy(
        model, run.validation_windows,
        inputs.make_masker(len(run.tokens), run.masking, with_original_ids=True, continuation=run.continuation),
        config.batch_size, config.seed)
    rows = history(run)
    best = min(rows, key=lambda row: float(monitoring.dev_value(row, "loss")))
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    steps_this_session = optimizer_steps - (run.state or {}).get("global_step", 0)
    return {
        "validation_masked_accuracy": scores["masked_accuracy"],
        "validation_masked_cross_entropy": scores["masked_cross_entropy"],
        "validation_perplexity": scores["perplexity"],
        "evaluation_protocol": "validation split, every window, 15% masked (80% [MASK] / 10% random / 10% kept), "
                               f"seed {evaluation.PROTOCOL_SEED}",
        "cloze_top1": scores["cloze_top1"], "cloze_top5": scores["cloze_top5"],
        "cloze_sentences": scores["cloze_sentences"],
        "validation_windows": run.counts["validation_windows"], "dev_windows": run.counts["dev_windows"],
        "train_masked_accuracy": float(rows[-1]["masked_accuracy"]),
        "all_positions_accuracy_original_style": copying,
        "epochs": len(rows), "steps_per_epoch": run.steps_per_epoch, "optimizer_steps": optimizer_steps,
        "best_epoch": int(best["epoch"]) + 1, "best_dev_loss": float(monitoring.dev_value(best, "loss")),
        "precision": run.precision, "fit_seconds_this_session": round(run.fit_seconds, 1),
        **({"time_budget": run.budget.figures()} if run.budget else {}),
        "tokens_per_second": round(steps_this_session * config.batch_size * run.counts["mean_sequence"]
                                   / run.fit_seconds, 1) if run.fit_seconds > 1 else None,
        "probe": [fill for phrase in config.probe_phrases
                  for fill in probe.top_k_fills(model, run.tokenizer, run.tokens, phrase, config.top_k,
                                                config.max_seq_len)],
    }


def publish(run: Run, metrics: dict, references: list[dict]) -> None:
    """Write the finished run folder in one piece, with its manifest, and drop the in-progress one;
    its report compares it with the recorded `references` (`report.read_references`)."""
    config, model = run.config, run.model
    with artifacts.atomic_dir(config.run_dir) as folder:
        model.save(os.path.join(folder, "model.keras"))
        for name in (resume.HISTORY, resume.BEST_MODEL, resume.PROBE_HISTORY):
            shutil.copy(os.path.join(run.work, name), os.path.join(folder, name))
        shutil.copytree(os.path.join(run.work, monitoring.TENSORBOARD_DIR), os.path.join(folder, monitoring.TENSORBOARD_DIR))
        monitoring.save_curves(history(run), os.path.join(folder, monitoring.CURVES_PNG),
                               f"{os.path.basename(config.run_dir)}: {metrics['optimizer_steps']} steps, held-out "
                               f"masked accuracy {metrics['validation_masked_accuracy']:.3f}")
        shutil.copy(artifacts.vocab_path(config.data_dir), os.path.join(folder, "vocab.txt"))
        artifacts.write_json(os.path.join(folder, "config.json"), config.as_dict())
        artifacts.write_json(os.path.join(folder, "metrics.json"), metrics)
        export.save(export.FillMaskExport(model, run.tokens, config.max_seq_len, config.top_k), "fill_mask",
                    os.path.join(folder, "fill_mask_export"), max_seq_len=config.max_seq_len, top_k=config.top_k)
        scores = {"masked_accuracy": metrics["validation_masked_accuracy"], "perplexity": metrics["validation_perplexity"],
                  "cloze_top1": metrics["cloze_top1"], "cloze_top5": metrics["cloze_top5"],
                  "optimizer_steps": metrics["optimizer_steps"],
                  "all_positions_accuracy": metrics["all_positions_accuracy_original_style"]}
        report.write(folder, report.render(os.path.basename(config.run_dir), config.preset, scores, config.as_dict(),
                                           probe.read_probe_history(os.path.join(folder, resume.PROBE_HISTORY)), True,
                                           references))
        artifacts.write_manifest(folder, "model_training", run.identity, vocab_size=len(run.tokens),
                                 train_windows=run.counts["train_windows"],
                                 validation_windows=run.counts["validation_windows"])
    shutil.rmtree(run.work)
