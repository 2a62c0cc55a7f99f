"""Training throughput on this machine: our step against an original-style step, in one run.

    python benchmark.py [--preset gpu] [--set mixed_precision=float32] [--steps 24] [--rounds 3]

Needs the prepared data (./download.sh && python data_prep.py). It measures, on the real reviews:
  1. vocabulary learning on the training split at the default cpu size and the preset's size;
  2. the input pipeline alone (tokenise + window + mask + batch) in sequences/s, on its first pass and
     in the steady state (windows cached), against what a T4 / A100 would consume at 30% MFU, and the
     steady state's two halves alone (shuffle + group by length; masking);
  3. our training step at the preset's shape (default: the gpu preset = the original's shape:
     vocab 30000, 256-token windows, batch 32, hidden 256, 4 heads, FFN 512, 4 layers);
  4. a reference step built the way the original project built it (key_dim = hidden size per
     head, vocabulary logits and loss at every position, every review cut/padded to 256 tokens);
  5. this machine's matmul peak (fp32 and bf16) and our model FLOPs utilisation (MFU);
  6. Keras `fit` on real batches (cached, prefetched): with the callbacks a time-limited run uses
     per step (the time budget sets the learning rate before every step; TerminateOnNaN reads the
     loss), with none, and with several steps per tf.function call (`steps_per_execution`);
and prints one table. Steps are timed after warm-up on batches already in memory, so the model
is measured alone; the pipeline is measured alone in (2).

`--profile` instead traces `--fit-steps` steps of `fit` with TensorFlow's profiler and prints where a
step's time goes (embedding, attention, FFN, layer norms, the masked-LM head, loss, optimizer, input,
the rest), from each op's self time summed over both threads; it needs `pip install xprof` (the
profiler's reader), which the pipeline does not.
"""

from __future__ import annotations

import argparse
import resource
import time

import config as config_module
from imdb_bert import artifacts, corpus, pipeline, vocab


# Published dense peaks (TFLOP/s) of the GPUs Colab offers, in the precision `mixed_precision=auto` picks
# there (T4: float16, A100: bfloat16), and the MFU at which to ask whether the input keeps them fed.
GPU_PEAKS = {"T4 (fp16 65 TFLOP/s)": 65.0, "A100 (bf16 312 TFLOP/s)": 312.0}
GPU_MFU = 0.3


def windows_per_second(batches, count: int) -> float:
    """Windows per second of a stream of batches (the first dimension of each element), over `count`
    batches after the first: building the iterator and tracing its functions are not its rate."""
    stream = iter(batches)
    next(stream)
    started, windows = time.perf_counter(), 0
    for _ in range(count):
        windows += int(next(stream).shape[0])
    return windows / (time.perf_counter() - started)


def rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 20) -> float:
    """Best GFLOP/s of a square matmul chain on this machine, in `dtype`."""
    import tensorflow as tf

    a = tf.random.normal((size, size), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.random.normal((size, size)), dtype)
    multiply = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    multiply(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        multiply(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def model_flops(real_lengths, masked: int, config, vocab_size: int, every_position: bool = False,
                key_dim: int | None = None) -> float:
    """Training FLOPs (forward + backward = 3x forward) of the matmuls for real tokens only.

    Linear layers cost 2*params per token; attention 2*2*length*head_dims per token per layer; the
    vocabulary projection runs at the masked positions (or every position, for the reference).
    """
    hidden, ffn, heads = config.hidden_size, config.ffn_size, config.num_heads
    inner = (key_dim or hidden // heads) * heads
    tokens = float(sum(real_lengths))
    pairs = float(sum(length * length for length in real_lengths))
    per_layer = 2 * tokens * (3 * hidden * inner + inner * hidden + 2 * hidden * ffn) + 2 * 2 * pairs * inner
    scored = tokens if every_position else masked
    head = 2 * scored * hidden * vocab_size + (0 if every_position else 2 * scored * hidden * hidden)
    return 3 * (config.num_layers * per_layer + head)


def reference_masked_lm(vocab_size: int, config):
    """The original project's model, rebuilt from its README and the keras-io example it followed:
    post-norm blocks with ReLU FFNs and dropout 0.1, attention with key_dim = hidden_size in each
    head (4x the usual projection width), a softmax over the vocabulary at every position and a
    loss over every token, Adam. Same shape as `config`."""
    import keras
    from keras import layers

    ids = keras.Input((config.max_seq_len,), dtype="int32")
    x = layers.Embedding(vocab_size, config.hidden_size)(ids)
    x = x + layers.Embedding(config.max_seq_len, config.hidden_size)(keras.ops.arange(config.max_seq_len))
    for _ in range(config.num_layers):
        attended = layers.MultiHeadAttention(config.num_heads, key_dim=config.hidden_size)(x, x, x)
        x = layers.LayerNormalization(epsilon=1e-6)(x + layers.Dropout(0.1)(attended))
        ffn = layers.Dense(config.hidden_size)(layers.Dense(config.ffn_size, activation="relu")(x))
        x = layers.LayerNormalization(epsilon=1e-6)(x + layers.Dropout(0.1)(ffn))
    probabilities = layers.Dense(vocab_size, activation="softmax")(x)
    model = keras.Model(ids, probabilities)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy()])
    return model


def time_alternating(runs: dict, rounds: int) -> dict:
    """Seconds per pass over its batches of each `name: (step, batches)`: the median of the
    `rounds` alternating passes. Tokens per second are then the batches' total tokens over it.

    Call it after a warm-up pass of each (which traces every shape). In each of the `rounds` rounds
    every model runs all its batches in turn: a shared machine that slows down for a while slows
    both sides alike, so the ratio does not depend on which model ran during the slow stretch.
    """
    passes = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (step, batches) in runs.items():
            started = time.perf_counter()
            for batch in batches:
                step(batch)
            passes[name].append(time.perf_counter() - started)
    return {name: sorted(values)[len(values) // 2] for name, values in passes.items()}


# Which part of the step an op belongs to, by the first fragment of its name (lower case) that matches.
PROFILE_PARTS = [("optimizer", ("adamw", "/update", "clip_by", "global_norm", "assignvariable", "assignadd",
                                "assignsub")),
                 ("masked-LM head", ("mlm_head", "gather_masked")),
                 ("loss and accuracy", ("masked_token_cross_entropy", "softmax", "argmax", "scatter", "loss")),
                 ("layer norms", ("norm",)), ("attention", ("attention",)), ("FFN", ("ffn_",)),
                 ("embeddings", ("token_embedding", "position_embedding", "unsortedsegmentsum")),
                 ("input", ("iterator", "dataset"))]


def profile_fit(model, feed, steps: int) -> list[tuple[str, float]]:
    """(part, ms per step) of `steps` traced fit steps, from the profiler's per-op self times."""
    import glob
    import json
    import tempfile

    import tensorflow as tf
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        raise artifacts.StageError("--profile needs the profiler's reader: pip install xprof") from None
    model.fit(feed, steps_per_epoch=steps, epochs=1, verbose=0)   # traced and warm before the trace
    folder = tempfile.mkdtemp(prefix="imdb-bert-profile-")
    tf.profiler.experimental.start(folder)
    model.fit(feed, steps_per_epoch=steps, epochs=1, verbose=0)
    tf.profiler.experimental.stop()
    data, _ = raw_to_tool_data.xspace_to_tool_data(glob.glob(f"{folder}/plugins/profile/*/*.xplane.pb"),
                                                    "framework_op_stats", {})
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    parts: dict[str, float] = {}
    for row in table["rows"]:
        op = dict(zip(columns, (cell.get("v") for cell in row["c"])))
        if op["type"] == "IDLE":
            continue
        name = f"{op['operation']} {op['type']}".lower()
        part = next((part for part, fragments in PROFILE_PARTS if any(f in name for f in fragments)), "the rest")
        parts[part] = parts.get(part, 0.0) + op["total_self_time"] / 1000 / steps
    return sorted(parts.items(), key=lambda item: -item[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_module.add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=24, help="distinct batches timed per model (default 24)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timing rounds of both models after warm-up (default 3)")
    parser.add_argument("--skip-vocab", action="store_true", help="skip the vocabulary-learning timings")
    parser.add_argument("--peak-size", type=int, default=2048, help="matrix size of the matmul peak timing (default 2048)")
    parser.add_argument("--fit-steps", type=int, default=64,
                        help="steps per timed fit call in the fit-overhead timing (default 64; 0 skips it)")
    parser.add_argument("--steps-per-execution", type=int, default=8,
                        help="steps per tf.function call in the fit-overhead timing (default 8)")
    parser.add_argument("--profile", action="store_true",
                        help="print where a fit step's time goes instead (needs pip install xprof)")
    parser.add_argument("--pipeline-batches", type=int, default=300,
                        help="batches the input pipeline is timed over (default 300)")
    arguments = parser.parse_args()
    if arguments.preset is None:
        arguments.preset = "gpu"
    config = config_module.config_from_args(arguments)
    default_config = config_module.make_config("cpu")
    print(config_module.describe(config))

    import keras
    import numpy as np
    import tensorflow as tf

    from imdb_bert import inputs, training
    from imdb_bert.model import ModelConfig, build_masked_lm

    prepared = artifacts.prepared_dir(config.data_dir)
    artifacts.read_manifest(prepared, f"run: {pipeline.COMMANDS['download']} && {pipeline.COMMANDS['data_prep']}")
    train_texts = corpus.split_texts(prepared, "train")
    rows = []

    # 1. Vocabulary learning (the preset's vocabulary is then used for everything below).
    sizes = [config.vocab_size] if arguments.skip_vocab else sorted({default_config.vocab_size, config.vocab_size})
    for size in sizes:
        started = time.perf_counter()
        tokens, _ = vocab.learn_vocabulary(train_texts, size, config.vocab_min_word_count)
        seconds = time.perf_counter() - started
        rows.append((f"vocab learning, target {size}", f"{seconds:.1f} s",
                     f"{len(tokens)} tokens ({(len(tokens) - size) / size:+.2%})"))
    tokenizer = vocab.make_tokenizer(tokens)
    vocab_size = len(tokens)

    # 2. The input pipeline alone, from the shards: tokenise, window, shuffle, bucket, mask.
    precision = training.resolve_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    masker = inputs.make_masker(vocab_size, pipeline.settings(inputs.MaskingConfig, config))
    uncached = inputs.window_dataset(prepared, "train", tokenizer, config.max_seq_len)
    stream = inputs.training_dataset(uncached, masker, config.batch_size, config.max_seq_len, seed=config.seed)
    if arguments.profile:
        keras.utils.set_random_seed(config.seed)
        profiled = build_masked_lm(pipeline.settings(ModelConfig, config, vocab_size=vocab_size))
        training.compile_masked_lm(profiled, pipeline.settings(training.ScheduleConfig, config, train_minutes=0.0),
                                   config.weight_decay, 10_000, config.jit_compile, config.steps_per_execution)
        steps = arguments.fit_steps or 64
        feed = stream.take(steps).cache().repeat().prefetch(tf.data.AUTOTUNE)
        parts = profile_fit(profiled, feed, steps)
        total = sum(ms for _, ms in parts)
        print(f"\nbenchmark --profile: preset {config.preset}, {precision}, {steps} fit steps traced; op self "
              f"time per step, summed over the threads (the step's wall time is shorter where ops overlap)")
        for part, ms in parts:
            print(f"  {part:<20} {ms:7.1f} ms/step  {ms / total:6.1%}")
        print(f"  {'all ops':<20} {total:7.1f} ms/step")
        return
    started, sequences = time.perf_counter(), 0
    for features, _, _ in stream.take(arguments.pipeline_batches):
        sequences += int(features["input_ids"].shape[0])
    pipeline_rate = sequences / (time.perf_counter() - started)   # first pass: tokenising as it goes
    # Steady state, as in training after its first pass: every window tokenised once and cached, then
    # shuffled, grouped by length and masked afresh for each batch.
    uncached.reduce(0, lambda count, window: count + 1)   # one whole pass fills the cache
    # The clock starts after the first batch: building the iterator and tracing the masking take
    # about a second, which would otherwise count as the pipeline's rate.
    steady_rate = windows_per_second(
        inputs.training_dataset(uncached, masker, config.batch_size, config.max_seq_len, seed=config.seed + 1)
        .map(lambda features, labels, weights: features["input_ids"]), arguments.pipeline_batches)
    # Its two halves alone, to say which one limits it: shuffling and grouping the cached windows by
    # length, and masking batches that are already in memory (every core on it, as in training).
    grouped = inputs.ragged_windows_by_length(uncached.shuffle(20_000, seed=config.seed).repeat(), config.batch_size,
                                              config.max_seq_len, drop_remainder=True)
    grouping_rate = windows_per_second(grouped, arguments.pipeline_batches)

    def masked_ids(index, batch):
        return masker(batch, tf.stack([tf.constant(config.seed, tf.int64), index]))[0]["input_ids"]

    in_memory = grouped.take(64).cache().repeat().enumerate()
    masking_rate = windows_per_second(in_memory.map(masked_ids, num_parallel_calls=tf.data.AUTOTUNE)
                                      .prefetch(tf.data.AUTOTUNE), arguments.pipeline_batches)

    # Real batches in memory, and the share of their positions that are real tokens.
    batches = [batch for batch in stream.take(arguments.steps)]
    real_lengths = [int(n) for f, _, _ in batches
                    for n in tf.reduce_sum(tf.cast(f["input_ids"] != inputs.PAD_ID, tf.int32), axis=1)]
    real = sum(real_lengths)
    positions = sum(int(tf.size(f["input_ids"])) for f, _, _ in batches)
    masked = sum(int(tf.reduce_sum(w)) for _, _, w in batches)

    # 3. Our step, and 4. the reference step: every review cut/padded to max_seq_len, logits and
    # loss everywhere. Built one after the other (each under its own dtype policy), timed alternately.
    keras.utils.set_random_seed(config.seed)
    model = build_masked_lm(pipeline.settings(ModelConfig, config, vocab_size=vocab_size))
    training.compile_masked_lm(model, pipeline.settings(training.ScheduleConfig, config), config.weight_decay,
                               total_steps=10_000)
    before = rss_mb()
    for batch in batches:   # warm-up
        model.train_on_batch(*batch)
    ours_memory = rss_mb()
    keras.mixed_precision.set_global_policy("float32")
    reference = reference_masked_lm(vocab_size, config)
    reference_batches = []
    for features, _, _ in batches[: max(4, len(batches) // 3)]:
        ids = features["input_ids"].numpy()
        padded = np.zeros((config.batch_size, config.max_seq_len), dtype=np.int32)
        padded[:, : ids.shape[1]] = ids
        reference_batches.append((padded, padded))   # labels at every position, padding included
    for batch in reference_batches:   # warm-up
        reference.train_on_batch(*batch)
    passes = time_alternating({"ours": (lambda batch: model.train_on_batch(*batch), batches),
                                "reference": (lambda batch: reference.train_on_batch(*batch), reference_batches)},
                               rounds=arguments.rounds)
    ours, reference_time = passes["ours"] / len(batches), passes["reference"] / len(reference_batches)
    reference_memory = rss_mb()
    ours_tokens = real / passes["ours"]   # all real tokens of the timed batches over the time they took
    ours_flops = model_flops(real_lengths, masked, config, vocab_size) / passes["ours"]
    consumed = config.batch_size / ours
    reference_tokens = config.batch_size * config.max_seq_len / reference_time   # every position counted

    # 6. fit's own per-step cost on real batches: `--fit-steps` of them from the input pipeline, cached
    # after the first pass (a new fit call starts a new iterator, and the pipeline's shuffle buffer would
    # refill each time), repeated and prefetched. Each model first trains two passes (tracing the shapes,
    # filling the cache), then is timed.
    keras.mixed_precision.set_global_policy(precision)
    feed = stream.take(arguments.fit_steps).cache().repeat().prefetch(tf.data.AUTOTUNE)

    def fit_seconds_per_step(callbacks, steps_per_execution=1):
        keras.utils.set_random_seed(config.seed)
        fitted = build_masked_lm(pipeline.settings(ModelConfig, config, vocab_size=vocab_size))
        # A time-limited schedule (a rate the budget sets), whatever the preset.
        schedule = pipeline.settings(training.ScheduleConfig, config, train_minutes=1.0, lr_schedule="linear")
        training.compile_masked_lm(fitted, schedule, config.weight_decay, total_steps=10_000,
                                   steps_per_execution=steps_per_execution)
        fitted.fit(feed, steps_per_epoch=2 * arguments.fit_steps, epochs=1, verbose=0)
        seconds = []
        for _ in range(arguments.rounds):
            started = time.perf_counter()
            fitted.fit(feed, steps_per_epoch=arguments.fit_steps, epochs=1, verbose=0, callbacks=callbacks())
            seconds.append((time.perf_counter() - started) / arguments.fit_steps)
        return sorted(seconds)[len(seconds) // 2]

    def budget_callbacks():
        return [training.TimeBudget(10_000.0, config.learning_rate, config.warmup_steps, config.lr_schedule),
                training.PerplexityLogger(), keras.callbacks.TerminateOnNaN()]

    if arguments.fit_steps:
        fit_plain = fit_seconds_per_step(list)
        fit_budget = fit_seconds_per_step(budget_callbacks)
        fit_several = fit_seconds_per_step(list, arguments.steps_per_execution)

    # 5. Matmul peak and MFU.
    peak32 = matmul_peak("float32", arguments.peak_size)
    peak16 = matmul_peak("bfloat16", arguments.peak_size)
    peak_name = "bfloat16" if precision == "mixed_bfloat16" else "float32"
    peak = peak16 if peak_name == "bfloat16" else peak32

    # What a GPU would consume at a stated MFU of its published dense peak (T4 fp16, A100 bf16).
    flops_per_sequence = model_flops(real_lengths, masked, config, vocab_size) / len(real_lengths)
    gpu_rates = {name: peak_tflops * 1e12 * GPU_MFU / flops_per_sequence for name, peak_tflops in GPU_PEAKS.items()}
    rows += [
        ("input pipeline (tokenise+window+mask)", f"{pipeline_rate:,.0f} seq/s",
         f"{pipeline_rate / consumed:.1f}x what our step consumes ({consumed:,.0f} seq/s)"),
        ("input pipeline, steady (cached windows)", f"{steady_rate:,.0f} seq/s",
         "; ".join(f"{steady_rate / rate:.2f}x what a {name} at {GPU_MFU:.0%} MFU would consume ({rate:,.0f} seq/s)"
                   for name, rate in gpu_rates.items())),
        ("  of which: shuffle + group by length alone", f"{grouping_rate:,.0f} seq/s", "no masking"),
        ("  of which: masking alone", f"{masking_rate:,.0f} seq/s", "batches already in memory, parallel map"),
        ("real-token share of positions", f"{real / positions:.1%}", f"{positions - real} padding of {positions}"),
        (f"our step ({precision})", f"{ours * 1000:.0f} ms/step", f"{ours_tokens:,.0f} real tokens/s"),
        ("reference step (float32)", f"{reference_time * 1000:.0f} ms/step",
         f"{reference_tokens:,.0f} tokens/s (every position counted)"),
        ("ours / reference", f"{ours_tokens / reference_tokens:.2f}x", "tokens/s"),
        ("matmul peak float32 / bfloat16", f"{peak32:,.0f} / {peak16:,.0f} GFLOP/s", f"{arguments.peak_size}x{arguments.peak_size} matmul, best of 20"),
        ("our model FLOP/s, MFU", f"{ours_flops / 1e9:,.0f} GFLOP/s",
         f"MFU {ours_flops / 1e9 / peak:.0%} of the {peak_name} peak"
         + (f", {ours_flops / 1e9 / peak32:.0%} of the float32 peak" if peak_name == "bfloat16" else "")),
    ]
    if arguments.fit_steps:
        rows += [
            ("fit, no callbacks", f"{fit_plain * 1000:.0f} ms/step",
             f"{(fit_plain / ours - 1):+.1%} against our step called batch by batch"),
            ("fit, with the per-step callbacks", f"{fit_budget * 1000:.0f} ms/step",
             f"{(fit_budget / fit_plain - 1):+.1%} against fit with none"),
            (f"fit, {arguments.steps_per_execution} steps per call", f"{fit_several * 1000:.0f} ms/step",
             f"{(fit_several / fit_plain - 1):+.1%} against fit with one"),
        ]
    rows += [
        ("peak memory (RSS)", f"{ours_memory:,.0f} MB", f"{before:,.0f} MB before our model trained; "
                                                        f"{reference_memory:,.0f} MB after the reference"),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"\nbenchmark: preset {config.preset}, vocab {vocab_size}, seq {config.max_seq_len}, batch "
          f"{config.batch_size}, hidden {config.hidden_size}, {config.num_heads} heads, FFN {config.ffn_size}, "
          f"{config.num_layers} layers, {len(batches)} real batches")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    pipeline.run_stage(main)
