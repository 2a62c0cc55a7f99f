"""Optimiser, learning-rate schedules, loss and metrics for masked-LM training, and the
evaluation helpers that report honest numbers.

Loss and accuracy are weighted by the label weights the masker emits (1 at a real masked
position, 0 at a padded prediction slot), so only masked tokens count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from imdb_bert import inputs
from imdb_bert.model import BertMaskedLM


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning rate over training. `learning_rate` is always the peak, reached after warm-up."""
    learning_rate: float
    lr_schedule: str                  # cosine | linear | transformer
    warmup_steps: int
    train_minutes: float              # > 0: the decay follows the time trained, not the step


@keras.saving.register_keras_serializable(package="imdb_bert")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """"Attention is all you need" warm-up, scaled so it peaks at `peak` after `warmup_steps`:
    peak * min(step / warmup, sqrt(warmup / step)). (The paper's hidden^-0.5 * warmup^-0.5 is that peak.)"""

    def __init__(self, peak: float, warmup_steps: int):
        self.peak, self.warmup_steps = peak, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        return self.peak * tf.minimum(step / warmup, tf.sqrt(warmup / step))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def precision_for(gpu_compute_capabilities: list[tuple[int, int]], cpu_flags: str) -> str:
    """The Keras dtype policy `mixed_precision=auto` picks for a machine described by values: its GPUs'
    CUDA compute capabilities (none on a CPU machine) and its CPU's flags (/proc/cpuinfo).

    GPUs run 16-bit matmuls on tensor cores: bfloat16 from compute capability 8.0 (A100, L4, H100),
    float16 with loss scaling on 7.x (V100, T4: no bf16 there), float32 on older ones. A CPU with native
    bf16 (AVX512_BF16 or AMX) trains faster in bfloat16 at the same accuracy; elsewhere bf16 is emulated
    and slower, so float32.
    """
    if gpu_compute_capabilities:
        slowest = min(gpu_compute_capabilities)
        return "mixed_bfloat16" if slowest >= (8, 0) else "mixed_float16" if slowest >= (7, 0) else "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags) else "float32"


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy for a `mixed_precision` setting ("auto": `precision_for` this machine).
    Under mixed_float16 Keras' compile wraps the optimizer in a LossScaleOptimizer."""
    if requested != "auto":
        return requested
    capabilities = [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
                    for gpu in tf.config.list_physical_devices("GPU")]
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        flags = ""
    return precision_for(capabilities, flags)


@keras.saving.register_keras_serializable(package="imdb_bert")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then linear decay to zero at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        remaining = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * tf.clip_by_value(tf.minimum(step / warmup, remaining), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def decay_at(kind: str, progress: float) -> float:
    """The share of the peak rate left after `progress` (0..1) of training, for the time-driven schedule."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))   # cosine to 2%, as CosineDecay(alpha=0.02)


def learning_rate_schedule(schedule: ScheduleConfig, total_steps: int):
    """The configured schedule: linear warm-up then cosine or linear decay, or the Transformer schedule.
    A time-limited run starts at 0 and is driven by its `TimeBudget` callback instead."""
    if schedule.train_minutes:
        return 0.0
    if schedule.lr_schedule == "transformer":
        return TransformerSchedule(schedule.learning_rate, schedule.warmup_steps)
    warmup = min(schedule.warmup_steps, max(total_steps // 2, 1))
    if schedule.lr_schedule == "linear":
        return LinearDecay(schedule.learning_rate, warmup, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=schedule.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps - warmup, 1), alpha=0.02)


class TimeBudget(keras.callbacks.Callback):
    """Trains for `minutes` of training steps (the time between a step's start and end: validation,
    probes and checkpoints excluded), then stops. Before each step it sets the learning rate:
    linear warm-up over the first `warmup_steps` steps, then the decay of `kind` over the fraction
    of the time used, so a cheaper step buys more steps of the same schedule ("Cramming",
    Geiping & Goldstein 2022). `seconds` carries over a resumed run (`spent`).

    With `phase_share` (0 < share < 1), a fit call that begins before that share of the time ends
    there, so the caller can go on with other data (longer windows) under the same schedule."""

    def __init__(self, minutes: float, peak: float, warmup_steps: int, kind: str, spent: float = 0.0,
                 phase_share: float = 0.0):
        super().__init__()
        self.budget, self.peak, self.warmup_steps, self.kind = minutes * 60.0, peak, warmup_steps, kind
        self.seconds, self.started, self.tracing, self.step = spent, None, False, 0
        self.phase_end = phase_share * self.budget
        self.stop_at = self.budget

    @property
    def in_first_phase(self) -> bool:
        return self.seconds < self.phase_end

    @property
    def used_up(self) -> bool:
        return self.seconds >= self.budget

    def on_train_begin(self, logs=None):
        self.tracing = True   # the first step of a fit call also builds the graph: not training time
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))   # once, not every step
        self.stop_at = self.phase_end if self.in_first_phase else self.budget

    def on_train_batch_begin(self, batch, logs=None):
        warm = min((self.step + 1) / max(self.warmup_steps, 1), 1.0)
        self.model.optimizer.learning_rate = self.peak * warm * decay_at(self.kind, self.seconds / self.budget)
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if not self.tracing:
            self.seconds += time.perf_counter() - self.started
        self.tracing = False
        if self.seconds >= self.stop_at:
            self.model.stop_training = True


@keras.saving.register_keras_serializable(package="imdb_bert")
class LayerRateAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate is scaled per variable by `rate_factors[variable.path]` (default 1).

    Keras has no per-variable rates; `update_step` is its documented hook for an optimizer's update.
    The TensorFlow backend hands it the `tf.Variable` behind a Keras variable, named by the same path."""

    def __init__(self, rate_factors: dict[str, float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate_factors = dict(rate_factors or {})

    def update_step(self, gradient, variable, learning_rate):
        path = getattr(variable, "path", None) or variable.name.split(":")[0]
        return super().update_step(gradient, variable, learning_rate * self.rate_factors.get(path, 1.0))

    def get_config(self):
        return {**super().get_config(), "rate_factors": self.rate_factors}


def adamw(learning_rate, weight_decay: float, encoder, beta_2: float = 0.999,
          rate_factors: dict[str, float] | None = None) -> keras.optimizers.AdamW:
    """AdamW with gradient clipping; no decay on vectors (biases, norms) or the encoder's embedding
    tables; with `rate_factors`, a `LayerRateAdamW`."""
    kind, extra = (LayerRateAdamW, {"rate_factors": rate_factors}) if rate_factors else (keras.optimizers.AdamW, {})
    optimizer = kind(learning_rate=learning_rate, weight_decay=weight_decay, beta_2=beta_2, clipnorm=1.0, **extra)
    optimizer.exclude_from_weight_decay(var_list=[variable for variable in encoder.trainable_variables
                                                  if len(variable.shape) < 2] + encoder.embedding_tables())
    return optimizer


@tf.custom_gradient
def _softmax_cross_entropy(logits, labels):
    """Cross-entropy of integer `labels` [rows] under softmax(`logits`) [rows, classes], with its gradient.

    Same value and gradient as `tf.nn.sparse_softmax_cross_entropy_with_logits`, whose CPU kernel
    is about twice as slow forward and backward on vocabulary-sized logits as oneDNN's softmax plus
    a scatter (docs/throughput.md has the figures). The probability is floored at 1e-30, so one token's loss
    is capped at 69 nats (an untrained model starts near ln(vocab) = 10).
    """
    probabilities = tf.nn.softmax(logits)
    picked = tf.gather(probabilities, labels, batch_dims=1)

    def gradient(upstream):
        rows = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)
        return tf.tensor_scatter_nd_sub(probabilities, rows, tf.ones_like(picked)) * upstream[:, None], None

    return -tf.math.log(tf.maximum(picked, 1e-30)), gradient


@keras.saving.register_keras_serializable(package="imdb_bert")
class MaskedTokenCrossEntropy(keras.losses.Loss):
    """Mean cross-entropy over the real masked slots of the global batch, from float32 logits
    [batch, slots, vocab] and label weights [batch, slots] (1 real slot, 0 padding).

    With several replicas, each holds part of the batch with its own count of masked slots; the
    mean is over all of them (the counts are summed across replicas), not a mean of per-replica means.
    """

    def __init__(self, name="masked_token_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        classes = tf.shape(y_pred)[-1]
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        entropy = _softmax_cross_entropy(tf.reshape(tf.cast(y_pred, tf.float32), [-1, classes]), labels)
        return tf.reshape(entropy, tf.shape(y_true))

    def __call__(self, y_true, y_pred, sample_weight=None):
        entropy = self.call(y_true, y_pred)
        weights = tf.ones_like(entropy) if sample_weight is None else tf.cast(sample_weight, tf.float32)
        total, count = tf.reduce_sum(entropy * weights), tf.reduce_sum(weights)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Keras divides each replica's loss by the replica count before the gradients are summed.
            count = replica.all_reduce(tf.distribute.ReduceOp.SUM, count)
            total = total * replica.num_replicas_in_sync
        return total / tf.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="imdb_bert")
def masked_token_hits(y_true, y_pred):
    """1.0 where the top-scoring token is the label, per prediction slot.

    `tf.argmax` directly: `keras.ops.argmax` guards against negative zeros with four more full
    passes over the [batch, slots, vocab] logits (docs/throughput.md has the cost).
    """
    predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(tf.cast(y_true, tf.int32), predicted), tf.float32)


@keras.saving.register_keras_serializable(package="imdb_bert")
def masked_token_entropy(y_true, y_pred):
    """The masked-token cross-entropy per prediction slot (a metric where the loss holds more than it)."""
    return MaskedTokenCrossEntropy().call(y_true, y_pred)


def compile_masked_lm(model, schedule: ScheduleConfig, weight_decay: float, total_steps: int,
                      jit_compile: bool = False) -> None:
    """AdamW on the schedule, masked-only loss and accuracy. The loss is the masked-token
    cross-entropy, plus what the model adds itself (ELECTRA's replaced-token loss); when it adds
    something, the masked-token part is also logged alone, as `masked_loss`."""
    metrics = [keras.metrics.MeanMetricWrapper(masked_token_hits, name="masked_accuracy")]
    if not isinstance(model, BertMaskedLM):
        metrics.append(keras.metrics.MeanMetricWrapper(masked_token_entropy, name="masked_loss"))
    model.compile(
        optimizer=adamw(learning_rate_schedule(schedule, total_steps), weight_decay, model.encoder, beta_2=0.98),
        loss=MaskedTokenCrossEntropy(),
        # For the masked LM the loss already is the masked-token cross-entropy; a second
        # cross-entropy metric over the [batch, slots, vocab] logits would cost a visible share of the step.
        weighted_metrics=metrics,
        jit_compile=jit_compile)


class PerplexityLogger(keras.callbacks.Callback):
    """Adds `perplexity` and `val_perplexity` (exp of the masked-token cross-entropy: `masked_loss` where
    the model logs it, else the loss) to the logs.

    Put it before any logging callback so the CSV history carries them too.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            entropy = logs.get(prefix + "masked_loss", logs.get(prefix + "loss"))
            if entropy is not None:
                logs[prefix + "perplexity"] = float(math.exp(min(entropy, 50.0)))


def all_positions_accuracy(model: keras.Model, windows: tf.data.Dataset, masker, batch_size: int,
                           seed: int, max_batches: int = 20) -> float:
    """Token accuracy over *every* real position, the metric the original project reported.

    `masker` must be made `with_original_ids`. Most positions are unmasked, so the model can copy
    them from its input: this number says little about language modelling and is printed only to
    compare like with like.
    """
    correct = total = 0
    # Masked inside tf.data, as a graph: the masker is many small ops, slow one by one when eager.
    batches = (windows.ragged_batch(batch_size).take(max_batches).enumerate()
               .map(lambda index, batch: masker(batch, tf.stack([tf.constant(seed, tf.int64), index]))))
    for original_ids, features, _, _ in batches:
        length = int(features["input_ids"].shape[1])
        every_position = np.tile(np.arange(length, dtype=np.int32), (original_ids.shape[0], 1))
        input_ids = features["input_ids"].numpy().astype(np.int32)
        logits = model({"input_ids": input_ids, "masked_positions": every_position}, training=False)
        predicted = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
        real = original_ids.numpy() != inputs.PAD_ID
        correct += int(((predicted == original_ids.numpy()) & real).sum())
        total += int(real.sum())
    return correct / max(total, 1)


def count_tokens(windows: tf.data.Dataset) -> tuple[int, int]:
    """(windows, word pieces) in a window dataset (iterating it also fills its cache)."""
    count = tokens = 0
    for batch in windows.map(tf.size).batch(4096).as_numpy_iterator():
        count += batch.size
        tokens += int(batch.sum())
    return count, tokens
