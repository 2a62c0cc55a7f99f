import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import ROOT, masked_lm_for
from imdb_bert import inputs, model, training

VOCAB = 300


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    keras.utils.set_random_seed(1)
    return masked_lm_for(tiny_config, VOCAB, total_steps=100)


def predict(masked_lm, ids, positions):
    return keras.ops.convert_to_numpy(masked_lm({"input_ids": np.array([ids], dtype=np.int32),
                                                 "masked_positions": np.array([positions], dtype=np.int32)}))


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_padding_does_not_change_the_fills(norm_position):
    settings = config.make_config("tiny", {"norm_position": norm_position, "dropout": "0.1"})
    masked_lm = masked_lm_for(settings, VOCAB)
    sentence = [inputs.CLS_ID, 40, 41, inputs.MASK_ID, 43, 44, inputs.SEP_ID]
    padded = sentence + [inputs.PAD_ID] * (settings.max_seq_len - len(sentence))
    unpadded_logits = predict(masked_lm, sentence, [3, 1])
    padded_logits = predict(masked_lm, padded, [3, 1])
    np.testing.assert_allclose(unpadded_logits, padded_logits, atol=1e-5)
    assert unpadded_logits.shape == (1, 2, VOCAB)


@pytest.mark.slow
def test_loss_counts_masked_positions_only(tiny_model):
    rng = np.random.default_rng(0)
    features = {"input_ids": rng.integers(5, VOCAB, (4, 16)).astype(np.int32),
                "masked_positions": rng.integers(1, 15, (4, 6)).astype(np.int32)}
    labels = rng.integers(5, VOCAB, (4, 6))
    weights = np.zeros((4, 6), np.float32)
    weights[:, :3] = 1.0                       # the last three slots are padding
    scrambled = labels.copy()
    scrambled[:, 3:] = rng.integers(5, VOCAB, (4, 3))
    first = tiny_model.evaluate(features, labels, sample_weight=weights, return_dict=True, verbose=0)
    second = tiny_model.evaluate(features, scrambled, sample_weight=weights, return_dict=True, verbose=0)
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-6)
    assert first["masked_accuracy"] == pytest.approx(second["masked_accuracy"])
    # And the loss is the mean cross-entropy over the real slots, not diluted by the padded ones.
    logits = keras.ops.convert_to_numpy(tiny_model(features))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    assert first["loss"] == pytest.approx(-picked[:, :3].mean(), rel=1e-4)


def test_fast_loss_and_accuracy_match_tensorflow_reference_ops():
    """Our cross-entropy (oneDNN softmax + its own gradient) and hit metric against TensorFlow's ops."""
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(0, 8, (3, 5, VOCAB)), tf.float32)   # wide spread: tiny probabilities
    labels = tf.constant(rng.integers(0, VOCAB, (3, 5)), tf.int32)
    weights = tf.constant(rng.integers(0, 2, (3, 5)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = training.MaskedTokenCrossEntropy()(labels, logits, sample_weight=weights)
        entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        reference = tf.reduce_sum(entropy * weights) / tf.reduce_sum(weights)
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, logits), tape.gradient(reference, logits), atol=1e-6)
    # Labels the top-scoring token in the weighted slots, random elsewhere: hits and misses both occur.
    top = tf.argmax(logits, -1, output_type=tf.int32)
    mixed = tf.where(weights > 0, top, labels)
    expected = tf.cast(tf.equal(mixed, top), tf.float32)
    assert 0 < float(tf.reduce_sum(expected)) < 15
    np.testing.assert_array_equal(training.masked_token_hits(tf.cast(mixed, tf.float32), logits), expected)


def test_untied_output_projection_builds(tiny_config):
    settings = config.make_config("tiny", {"tie_embeddings": "false"})
    assert predict(masked_lm_for(settings, VOCAB), [3, 9, 2, 4], [2]).shape == (1, 1, VOCAB)


RELOAD = """
import sys, numpy as np, keras
sys.path.insert(0, {root!r})
from imdb_bert import probe
loaded = probe.load_model({path!r})
ids = np.array([[3, 10, 11, 2, 12, 4, 0, 0]], dtype=np.int32)
np.save({out!r}, keras.ops.convert_to_numpy(loaded({{"input_ids": ids, "masked_positions": np.array([[3, 1]], dtype=np.int32)}})))
"""


@pytest.mark.slow
# mixed_float16 with the Transformer schedule: the gpu preset as auto makes it on a T4 or V100.
@pytest.mark.parametrize("precision, schedule", [("float32", "cosine"), ("mixed_bfloat16", "cosine"),
                                                 ("mixed_float16", "transformer")])
def test_saved_model_reloads_in_a_fresh_process(tmp_path, precision, schedule):
    settings = config.make_config("tiny", {"lr_schedule": schedule})
    keras.mixed_precision.set_global_policy(precision)
    try:
        trained = masked_lm_for(settings, VOCAB, total_steps=100)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path, out = str(tmp_path / "model.keras"), str(tmp_path / "logits.npy")
    trained.save(path)
    # The fresh process never sets a dtype policy, as fill_mask.py does not.
    subprocess.run([sys.executable, "-c", RELOAD.format(root=ROOT, path=path, out=out)], check=True,
                   capture_output=True)
    expected = predict(trained, [3, 10, 11, 2, 12, 4, 0, 0], [3, 1])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_the_output_projection_is_the_embedding_table(tiny_model, tiny_config):
    """Tied, not copied: the head scores against the very variable the encoder embeds with."""
    assert tiny_model.head.token_embedding is tiny_model.encoder.token_embedding
    (table,) = [weight for weight in tiny_model.weights if tuple(weight.shape) == (VOCAB, tiny_config.hidden_size)]
    saved = table.numpy()
    try:
        table.assign(np.zeros_like(saved))   # every token scores its bias alone
        logits = predict(tiny_model, [3, 10, 11, 2, 12, 4], [3, 1])
        bias = tiny_model.encoder.token_embedding.output_bias.numpy()
        np.testing.assert_allclose(logits[0], np.stack([bias, bias]), atol=1e-6)
    finally:
        table.assign(saved)
    assert not np.allclose(predict(tiny_model, [3, 10, 11, 2, 12, 4], [3, 1])[0], np.stack([bias, bias]))


def test_a_classifier_head_goes_on_the_same_encoder_object(tiny_model):
    from imdb_bert import classifier

    sentiment = classifier.SentimentClassifier(tiny_model.encoder, dropout=0.0)
    assert sentiment.encoder is tiny_model.encoder
    shared = {id(weight) for weight in tiny_model.encoder.weights}
    assert shared <= {id(weight) for weight in sentiment.weights}


def test_the_frozen_probe_reads_the_embeddings_each_block_and_the_final_norm(tiny_model):
    from lab import linear_probe

    names, every_layer = linear_probe.representation_model(tiny_model.encoder)
    assert names[0] == "position_embedding" and names[-1] == "final_norm"
    assert len(names) == tiny_model.encoder.config.num_layers + 2
    ids = np.random.default_rng(0).integers(5, 100, (2, 16)).astype(np.int32)
    outputs = every_layer(ids)   # the same weights: its last output is the encoder's
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[-1]),
                               keras.ops.convert_to_numpy(tiny_model.encoder(ids)), atol=1e-6)


def classifier_copy(encoder):
    """A fresh encoder of the same shape, so training it leaves the shared fixture alone."""
    from imdb_bert.model import BertEncoder

    return BertEncoder.from_config(encoder.get_config())


LOSS_ON_TWO_REPLICAS = """
import sys, json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {root!r})
from imdb_bert import training
rng = np.random.default_rng(0)
logits = rng.normal(0, 3, (4, 6, 50)).astype(np.float32)
labels = rng.integers(0, 50, (4, 6)).astype(np.int32)
weights = np.zeros((4, 6), np.float32)
weights[:2, :6] = 1.0     # the first replica's half holds 12 masked slots...
weights[2:, :1] = 1.0     # ...the second's only 2
loss = training.MaskedTokenCrossEntropy()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
def step(inputs):
    y_true, y_pred, w = inputs
    return loss(y_true, y_pred, sample_weight=w) / strategy.num_replicas_in_sync   # Keras' scaling
data = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((labels, logits, weights)).batch(4),
    tf.distribute.InputOptions(experimental_fetch_to_device=False))
per_replica = strategy.run(step, args=(next(iter(data)),))
print(json.dumps(float(strategy.reduce("SUM", per_replica, axis=None))))
"""


@pytest.mark.slow
def test_several_replicas_give_the_mean_over_every_masked_token_of_the_global_batch():
    result = subprocess.run([sys.executable, "-c", LOSS_ON_TWO_REPLICAS.format(root=ROOT)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 3, (4, 6, 50)).astype(np.float32), rng.integers(0, 50, (4, 6))
    weights = np.zeros((4, 6))
    weights[:2, :6], weights[2:, :1] = 1.0, 1.0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    entropy = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    global_mean = (entropy * weights).sum() / weights.sum()
    mean_of_means = np.mean([(entropy[:2] * weights[:2]).sum() / 12, (entropy[2:] * weights[2:]).sum() / 2])
    assert abs(global_mean - mean_of_means) > 0.05            # the two readings differ on this batch
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(global_mean, rel=1e-5)


def test_an_encoder_without_biases_has_none():
    settings = config.make_config("tiny", {"use_bias": "false"})
    masked_lm = masked_lm_for(settings, VOCAB)
    encoder_biases = [weight.path for weight in masked_lm.encoder.weights
                      if weight.path.endswith(("bias", "beta")) and "token_embedding" not in weight.path]
    assert not encoder_biases
    assert predict(masked_lm, [3, 9, 2, 4], [2]).shape == (1, 1, VOCAB)


def random_batches(rows=8, length=16, slots=3):
    rng = np.random.default_rng(0)
    features = {"input_ids": rng.integers(5, VOCAB, (rows, length)).astype(np.int32),
                "masked_positions": rng.integers(1, length - 1, (rows, slots)).astype(np.int32)}
    return tf.data.Dataset.from_tensors((features, rng.integers(5, VOCAB, (rows, slots)),
                                         np.ones((rows, slots), np.float32))).repeat()


@pytest.mark.slow   # trains for seconds of wall clock by design
def test_a_time_budget_keeps_back_the_time_of_the_final_evaluation_and_exports():
    """The steps stop when the clock reaches the budget less what the evaluation and exports will take."""
    masked_lm = masked_lm_for(config.make_config("tiny", {"train_minutes": "0.05"}), VOCAB, total_steps=10)
    masked_lm.fit(random_batches(), steps_per_epoch=1, epochs=1, verbose=0)   # the graph is built before the clock
    budget = training.TimeBudget(0.05, 1e-3, 2, "linear", publish_seconds=1.5)   # 3 s, 1.5 s kept back
    masked_lm.fit(random_batches(), steps_per_epoch=20, epochs=10_000, verbose=0, callbacks=[budget])
    assert 1.5 <= budget.clock() < 2.5
    assert budget.state()["first_step_seconds"] is not None


@pytest.mark.slow   # trains for seconds of wall clock by design
def test_one_slow_early_step_does_not_end_a_short_budget():
    """A 12-second budget keeping back 20 batches of evaluation: the reserve is reckoned from the
    median of the first steps, so one slow second step (2 s, as when the input pipeline fills its
    buffers) does not make it 20 s and stop the run at once (reckoned from that one step: 3 steps)."""
    masked_lm = masked_lm_for(config.make_config("tiny", {"train_minutes": "0.2"}), VOCAB, total_steps=10)
    masked_lm.fit(random_batches(), steps_per_epoch=1, epochs=1, verbose=0)   # the graph is built before the clock
    budget = training.TimeBudget(0.2, 1e-3, 2, "linear", final_batches=20)
    slow_second = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(2.0 * (batch == 1)))
    masked_lm.fit(random_batches(), steps_per_epoch=20, epochs=10_000, verbose=0, callbacks=[slow_second, budget])
    assert budget.step > 20 and budget.clock() > 6.0   # past the 10 steps the median is taken over


@pytest.mark.slow   # trains for seconds of wall clock by design
def test_a_time_limited_run_checkpoints_by_the_clock(tmp_path):
    from imdb_bert import resume

    class Counted(resume.TrainingCheckpoint):
        def _save(self, epoch, step):
            self.saved.append(step)
            super()._save(epoch, step)

    masked_lm = masked_lm_for(config.make_config("tiny", {}), VOCAB, total_steps=10)
    slow_steps = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.2))
    for every_seconds, mid_epoch in ((0.0, 0), (0.5, (2, 4))):
        checkpoint = Counted(str(tmp_path), 0, every_seconds=every_seconds)
        checkpoint.saved = []
        masked_lm.fit(random_batches(), steps_per_epoch=10, epochs=1, verbose=0, callbacks=[slow_steps, checkpoint])
        assert checkpoint.saved[-1] == 0   # the epoch's end
        if mid_epoch:
            assert mid_epoch[0] <= len(checkpoint.saved) - 1 <= mid_epoch[1]   # 10 steps of 0.2 s, one every 0.5 s
        else:
            assert checkpoint.saved == [0]


@pytest.mark.slow
def test_a_time_budget_stops_training_and_decays_the_rate_to_zero_over_the_time():
    settings = config.make_config("tiny", {"train_minutes": "0.05", "lr_schedule": "linear", "warmup_steps": "2"})
    masked_lm = masked_lm_for(settings, VOCAB, total_steps=10)
    masked_lm.fit(random_batches(), steps_per_epoch=1, epochs=1, verbose=0)   # the graph is built before the clock
    budget = training.TimeBudget(0.05, 1e-3, 2, "linear")
    rates = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: rates.append(
        float(keras.ops.convert_to_numpy(masked_lm.optimizer.learning_rate))))
    history = masked_lm.fit(random_batches(), steps_per_epoch=20, epochs=10_000, verbose=0, callbacks=[budget, record])
    assert budget.clock() >= 3.0 and len(history.history["loss"]) < 10_000          # stopped on its clock
    assert max(rates) == pytest.approx(1e-3, rel=0.05) and rates[-1] < 0.05 * max(rates)   # peak, then ~0 at the end
    assert rates.index(max(rates)) < len(rates) // 4


def test_several_steps_per_call_are_counted_as_steps_by_the_budget_checkpoints_and_rate(tmp_path):
    """With steps_per_execution=5 Keras calls the batch callbacks once per 5 steps (and per 5 batches of
    validation): the time budget, the checkpoint's position and the tokens-per-second rate count the
    optimizer's steps, and the budget the validation batches, not the calls."""
    from imdb_bert import monitoring, resume

    masked_lm = masked_lm_for(config.make_config("tiny", {"steps_per_execution": "5", "train_minutes": "1"}), VOCAB,
                              total_steps=100)
    budget = training.TimeBudget(100.0, 1e-3, 2, "linear")
    rate = monitoring.TrainingRate(tokens_per_step=1.0)

    class Recorded(resume.TrainingCheckpoint):
        def _save(self, epoch, step):
            self.saved.append((epoch, step, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))))

    checkpoint = Recorded(str(tmp_path), every_steps=10)
    checkpoint.saved = []
    history = masked_lm.fit(random_batches(), steps_per_epoch=30, epochs=2, verbose=0, callbacks=[budget, rate, checkpoint],
                            validation_data=random_batches().take(20))
    assert int(keras.ops.convert_to_numpy(masked_lm.optimizer.iterations)) == 60 == budget.step
    assert budget.test_batches == 20   # the time per validation batch the reserve is reckoned from
    # Every 10 steps (the epoch's last step among them, as with one step per call), and at each epoch's end.
    assert checkpoint.saved == [(0, 10, 10), (0, 20, 20), (0, 30, 30), (1, 0, 30), (1, 10, 40), (1, 20, 50), (1, 30, 60),
                                (2, 0, 60)]
    assert history.history["tokens_per_second"][-1] > 0 and rate.steps == 30
