"""Optimiser, learning-rate schedules, loss and metrics for masked-LM training, and the
evaluation helpers that report honest numbers.

Loss and accuracy are weighted by the label weights the masker emits (1 at a real masked
position, 0 at a padded prediction slot), so only masked tokens count.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from imdb_bert import inputs


@keras.saving.register_keras_serializable(package="imdb_bert")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """"Attention is all you need" warm-up: scale * hidden^-0.5 * min(step^-0.5, step * warmup^-1.5)."""

    def __init__(self, hidden_size: int, warmup_steps: int, scale: float = 1.0):
        self.hidden_size, self.warmup_steps, self.scale = hidden_size, warmup_steps, scale

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        return self.scale * self.hidden_size ** -0.5 * tf.minimum(tf.math.rsqrt(step), step * warmup ** -1.5)

    def get_config(self):
        return {"hidden_size": self.hidden_size, "warmup_steps": self.warmup_steps, "scale": self.scale}


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy for a `mixed_precision` setting ("auto" decided by the hardware).

    bf16 matmuls ran 1.2-1.4x faster than fp32 on this project's AVX512_BF16 CPU and reached the same
    accuracy; on a CPU without native bf16 they are emulated and slower, so auto keeps float32.
    """
    if requested != "auto":
        return requested
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def learning_rate_schedule(config, total_steps: int):
    """The configured schedule: linear warm-up then cosine decay, or the Transformer schedule."""
    if config.lr_schedule == "transformer":
        return TransformerSchedule(config.hidden_size, config.warmup_steps, config.learning_rate)
    warmup = min(config.warmup_steps, max(total_steps // 2, 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=config.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps - warmup, 1), alpha=0.02)


@tf.custom_gradient
def _softmax_cross_entropy(logits, labels):
    """Cross-entropy of integer `labels` [rows] under softmax(`logits`) [rows, classes], with its gradient.

    Same value and gradient as `tf.nn.sparse_softmax_cross_entropy_with_logits`, whose CPU kernel
    took 120-150 ms forward and backward on [1280, 30000] logits here; oneDNN's softmax plus a
    scatter takes 69 ms. The probability is floored at 1e-30, so one token's loss
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
    """Cross-entropy of each prediction slot [batch, slots] from float32 logits [batch, slots, vocab].

    Keras applies the label weights: with `mean_with_sample_weight` the loss is the mean over the
    real masked slots.
    """

    def __init__(self, name="masked_token_cross_entropy", reduction="mean_with_sample_weight", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        classes = tf.shape(y_pred)[-1]
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        entropy = _softmax_cross_entropy(tf.reshape(tf.cast(y_pred, tf.float32), [-1, classes]), labels)
        return tf.reshape(entropy, tf.shape(y_true))


@keras.saving.register_keras_serializable(package="imdb_bert")
def masked_token_hits(y_true, y_pred):
    """1.0 where the top-scoring token is the label, per prediction slot.

    `tf.argmax` directly: `keras.ops.argmax` guards against negative zeros with four more full
    passes over the [batch, slots, vocab] logits (62 vs 16 ms at vocab 30k, ~5% of the step).
    """
    predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(tf.cast(y_true, tf.int32), predicted), tf.float32)


def compile_masked_lm(model: keras.Model, config, total_steps: int) -> None:
    """AdamW (no decay on biases, norms or embeddings), masked-only loss and metrics."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(config, total_steps),
                                       weight_decay=config.weight_decay, beta_2=0.98, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embeddings", "positions"])
    model.compile(
        optimizer=optimizer,
        loss=MaskedTokenCrossEntropy(),
        # The loss already is the masked-token cross-entropy; a second cross-entropy metric over
        # the [batch, slots, vocab] logits cost ~15% of the step at vocab 30k.
        weighted_metrics=[keras.metrics.MeanMetricWrapper(masked_token_hits, name="masked_accuracy")],
        jit_compile=config.jit_compile)


class PerplexityLogger(keras.callbacks.Callback):
    """Adds `perplexity` and `val_perplexity` (exp of the loss, the masked-token cross-entropy) to the logs.

    Put it before any logging callback so the CSV history carries them too.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            entropy = logs.get(prefix + "loss")
            if entropy is not None:
                logs[prefix + "perplexity"] = float(math.exp(min(entropy, 50.0)))


def all_positions_accuracy(model: keras.Model, windows: tf.data.Dataset, vocab_size: int, config,
                           max_batches: int = 20) -> float:
    """Token accuracy over *every* real position, the metric the original project reported.

    Most positions are unmasked, so the model can copy them from its input: this number says
    little about language modelling and is printed only to compare like with like.
    """
    masker = inputs.make_masker(vocab_size, config, with_original_ids=True)
    correct = total = 0
    for original_ids, features, _, _ in windows.ragged_batch(config.batch_size).map(masker).take(max_batches):
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


def prepare_multi_worker_fit(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Work around two Keras 3 bugs that stop `fit`/`evaluate` under MultiWorkerMirroredStrategy
    (call inside the strategy's scope, after `compile`).

    1. Before the first step Keras all-reduces one input batch across the workers just to learn its
       shapes, which fails for dict inputs (keras-team/keras#20329) and could not work for batches
       whose padded lengths differ between workers. Here the loss, metric and optimizer state is
       built from `dataset`'s element spec instead, and that step is skipped.
    2. Keras averages each step's logged values across workers along axis 0, which fails for scalars
       (tensorflow/tensorflow#72388). Here each step's logs are given that axis.
    Neither changes what is trained: gradients are all-reduced by the optimizer as usual.
    """
    symbolic = tf.nest.map_structure(lambda spec: keras.KerasTensor(spec.shape, spec.dtype.name),
                                     dataset.element_spec)
    model._symbolic_build(data_batch=symbolic)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step: {key: tf.reshape(value, [1])
                                                      for key, value in step(data).items()})
