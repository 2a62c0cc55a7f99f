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


# Steps timed before a time budget may stop on a reserve reckoned from the step time.
MEASURED_STEPS = 10


class TimeBudget(keras.callbacks.Callback):
    """The training stage's wall-clock budget: `minutes` from the stage's start (`origin`, a
    `time.perf_counter()` reading; without one, from the end of the first step) to the published run
    folder, everything included: steps, validation, probes, checkpoints, the final evaluation, exports.
    It keeps back what comes after the last step: that epoch's end (validation, probe, checkpoints), as long as the last epoch end took
    (before the first, `dev_batches` batches), the held-out evaluation's `final_batches` at the
    time per batch the run's validation passes measure (before the first, half a training step), and
    `publish_seconds`.
    Steps stop when the clock reaches the budget less that reserve, so a faster machine makes more
    steps in the same minutes, never a longer wait. The step time is the median of the first
    `MEASURED_STEPS` steps (then a moving average), and the steps do not stop before those are timed:
    one slow early step would otherwise reckon a reserve that ends a short budget at once.

    Before each step it sets the learning rate: linear warm-up over the first `warmup_steps` steps,
    then the decay of `kind` over the share of the training time used, so a cheaper step buys more
    steps of the same schedule ("Cramming", Geiping & Goldstein 2022). `spent` and `first_step` carry
    a resumed run's clock over from its earlier sessions (`state`).

    With `phase_share` (0 < share < 1), a fit call that begins before that share of the training time
    ends there, so the caller can go on with other data (longer windows) under the same schedule."""

    def __init__(self, minutes: float, peak: float, warmup_steps: int, kind: str, origin: float | None = None,
                 final_batches: int = 0, publish_seconds: float = 0.0, phase_share: float = 0.0,
                 state: dict | None = None, dev_batches: int = 0):
        super().__init__()
        self.budget, self.peak, self.warmup_steps, self.kind = minutes * 60.0, peak, warmup_steps, kind
        self.origin = origin   # None: the clock starts when the first step (which builds the graph) ends
        self.final_batches, self.publish_seconds, self.phase_share = final_batches, publish_seconds, phase_share
        self.dev_batches, self.epoch_end_seconds = dev_batches, None
        state = state or {}
        self.spent = state.get("train_seconds", 0.0)
        # A state saved before the clock counted the whole stage has no first step: its clock began there.
        self.first_step = state.get("first_step_seconds", 0.0 if "train_seconds" in state else None)
        self.step, self.step_seconds, self.eval_batch_seconds, self.call_began = 0, None, None, 0
        self.first_step_times: list[float] = []
        self.last_batch_end = self.test_started = None
        self.test_batches = 0
        self.in_phase = self.phase_ended = False
        self.stopped_at = self.reserved = None   # the clock when the steps stopped, and the reserve then

    def clock(self) -> float:
        """Seconds of the budget used: earlier sessions' and this one's since `origin`."""
        return self.spent + (time.perf_counter() - self.origin if self.origin is not None else 0.0)

    def reserve(self) -> float:
        """Seconds kept back for the final evaluation and the exports."""
        per_batch = self.eval_batch_seconds or 0.5 * (self.step_seconds or 0.0)
        epoch_end = self.epoch_end_seconds if self.epoch_end_seconds is not None else self.dev_batches * per_batch
        return epoch_end + self.final_batches * per_batch + self.publish_seconds

    def stop_seconds(self) -> float:
        return self.budget - self.reserve()

    def progress(self) -> float:
        """The share of the training time used (0 at the first step, 1 when the steps stop)."""
        first = self.first_step if self.first_step is not None else self.clock()
        return min(max((self.clock() - first) / max(self.stop_seconds() - first, 1e-9), 0.0), 1.0)

    @property
    def in_first_phase(self) -> bool:
        return self.progress() < self.phase_share

    @property
    def used_up(self) -> bool:
        return self.clock() >= self.stop_seconds()

    def state(self) -> dict:
        """What a checkpoint keeps, so a resumed run goes on with the same clock and schedule."""
        return {"train_seconds": round(self.clock(), 3), "first_step_seconds": self.first_step}

    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))   # once, not every step
        self.in_phase = self.in_first_phase
        self.phase_ended = False
        self.last_batch_end = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.test_started is not None:   # the last epoch's end: validation and every callback's work
            self.epoch_end_seconds = time.perf_counter() - self.test_started
            self.test_started = None

    def on_train_batch_begin(self, batch, logs=None):
        self.call_began = batch   # with steps_per_execution, a call trains steps `batch` to the end's `batch`
        if self.first_step is None:
            self.first_step = self.clock()
        warm = min((self.step + 1) / max(self.warmup_steps, 1), 1.0)
        self.model.optimizer.learning_rate = self.peak * warm * decay_at(self.kind, self.progress())

    def on_train_batch_end(self, batch, logs=None):
        steps = batch - self.call_began + 1
        self.step += steps
        now = time.perf_counter()
        if self.origin is None:
            self.origin = now
        if self.last_batch_end is not None:   # the first step of a fit call also builds the graph
            took = (now - self.last_batch_end) / steps
            if len(self.first_step_times) < MEASURED_STEPS:
                # The first steps after the graph is built can be slow (the input pipeline filling its
                # buffers): a median of several, not one, sets the step time the reserve is reckoned from.
                self.first_step_times.append(took)
                self.step_seconds = float(np.median(self.first_step_times))
            else:
                self.step_seconds = 0.9 * self.step_seconds + 0.1 * took
        self.last_batch_end = now
        if len(self.first_step_times) < MEASURED_STEPS and self.eval_batch_seconds is None:
            return   # too few steps measured to reckon the reserve from
        if self.used_up:
            self.stop()
        elif self.in_phase and not self.in_first_phase:
            self.phase_ended = True   # the caller goes on with the second phase, whatever the epoch's end costs
            self.stop()

    def on_epoch_end(self, epoch, logs=None):
        # The next step would come only after this epoch's probe and checkpoints: if that is past the
        # point where the steps must end, end here.
        if self.clock() + (self.epoch_end_seconds or 0.0) >= self.stop_seconds():
            self.stop()

    def stop(self) -> None:
        self.model.stop_training = True
        self.stopped_at, self.reserved = self.clock(), self.reserve()

    def figures(self) -> dict:
        """Where the steps stopped, and what was kept back then (for metrics.json and the last line)."""
        stopped_at = self.stopped_at if self.stopped_at is not None else self.clock()
        reserved = self.reserved if self.reserved is not None else self.reserve()
        return {"budget_seconds": self.budget, "steps_stopped_at_seconds": round(stopped_at, 1),
                "reserved_seconds": round(reserved, 1)}

    def on_test_begin(self, logs=None):
        self.test_started, self.test_batches = time.perf_counter(), 0

    def on_test_batch_end(self, batch, logs=None):
        self.test_batches = batch + 1   # with steps_per_execution, one call ends at batch `batch`

    def on_test_end(self, logs=None):
        if self.test_batches:
            self.eval_batch_seconds = (time.perf_counter() - self.test_started) / self.test_batches
        self.last_batch_end = None   # validation is not a step


def adamw(learning_rate, weight_decay: float, encoder, beta_2: float = 0.999) -> keras.optimizers.AdamW:
    """AdamW with gradient clipping; no decay on vectors (biases, norms) or the encoder's embedding tables."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay, beta_2=beta_2,
                                       clipnorm=1.0)
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


def compile_masked_lm(model, schedule: ScheduleConfig, weight_decay: float, total_steps: int,
                      jit_compile: bool = False, steps_per_execution: int = 1) -> None:
    """AdamW on the schedule, masked-only loss and accuracy (the loss is the masked-token cross-entropy)."""
    model.compile(
        optimizer=adamw(learning_rate_schedule(schedule, total_steps), weight_decay, model.encoder, beta_2=0.98),
        loss=MaskedTokenCrossEntropy(),
        # For the masked LM the loss already is the masked-token cross-entropy; a second
        # cross-entropy metric over the [batch, slots, vocab] logits would cost a visible share of the step.
        weighted_metrics=[keras.metrics.MeanMetricWrapper(masked_token_hits, name="masked_accuracy")],
        jit_compile=jit_compile, steps_per_execution=steps_per_execution)


class PerplexityLogger(keras.callbacks.Callback):
    """Adds `perplexity` and `val_perplexity` (exp of the masked-token cross-entropy, the loss) to the logs.

    Put it before any logging callback so the CSV history carries them too.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            entropy = logs.get(prefix + "loss")
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
