"""The GPU switches (mixed precision, XLA) each train the tiny model on real reviews to a loss close
to the float32 run's; the relu activation switch builds and trains too."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import masked_lm_for, masker_for
from imdb_bert import inputs, training, vocab

STEPS = 25


@pytest.fixture(scope="module")
def batches(fixture_reviews):
    tokens = vocab.learn_vocabulary([text for text, _ in fixture_reviews], vocab_size=1000, min_word_count=2)[0]
    settings = config.make_config("tiny")
    ids = inputs.tokenize_reviews(vocab.make_tokenizer(tokens), tf.constant([t for t, _ in fixture_reviews]))
    windows = tf.data.Dataset.from_tensor_slices(inputs.split_into_windows(ids, settings.max_seq_len - 2))
    windows = windows.map(tf.identity)   # plain tensors, as window_dataset gives
    data = inputs.validation_dataset(windows, masker_for(settings, len(tokens)), settings.batch_size,
                                     settings.max_seq_len, settings.seed)   # fixed, seeded masks
    return len(tokens), [padded(batch, settings.max_seq_len, settings.mask_rate) for batch in data.take(STEPS)]


def padded(batch, max_seq_len: int, mask_rate: float):
    """A batch padded to one shape (its padding is [PAD] or a zero-weight slot, so the loss is the
    same): XLA compiles a step once per input shape, and the length-grouped batches have many."""
    features, labels, weights = batch
    slots = inputs.max_predictions(max_seq_len, mask_rate)

    def pad(tensor, width):
        return tf.pad(tensor, [[0, 0], [0, width - tensor.shape[1]]])

    return ({"input_ids": pad(features["input_ids"], max_seq_len),
             "masked_positions": pad(features["masked_positions"], slots)},
            pad(labels, slots), pad(weights, slots))


def final_loss(batches, **overrides) -> float:
    vocab_size, data = batches
    settings = config.make_config("tiny", {key: str(value) for key, value in overrides.items()})
    keras.mixed_precision.set_global_policy(training.resolve_precision(settings.mixed_precision))
    try:
        keras.utils.set_random_seed(3)
        masked_lm = masked_lm_for(settings, vocab_size, total_steps=STEPS)
        for features, labels, weights in data:
            masked_lm.train_on_batch(features, labels, weights)
        losses = [float(masked_lm.test_on_batch(*batch)[0]) for batch in data[:10]]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(losses).all()
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def float32_loss(batches):
    return final_loss(batches, mixed_precision="float32")


@pytest.mark.parametrize("switch", [
    {"mixed_precision": "mixed_bfloat16"},
    {"mixed_precision": "mixed_float16"},
    {"jit_compile": True},
])
@pytest.mark.slow
def test_each_switch_trains_to_a_loss_close_to_float32(batches, float32_loss, switch):
    loss = final_loss(batches, mixed_precision=switch.get("mixed_precision", "float32"),
                      jit_compile=switch.get("jit_compile", False))
    untrained = np.log(batches[0])   # a uniform guess over the vocabulary
    assert loss < untrained - 0.3                      # it learned something
    assert abs(loss - float32_loss) < 0.03 * float32_loss, (loss, float32_loss)


@pytest.mark.slow
def test_relu_activation_trains(batches, float32_loss):
    loss = final_loss(batches, mixed_precision="float32", activation="relu")
    assert loss < np.log(batches[0]) - 0.3


@pytest.mark.parametrize("gpus, flags, policy", [
    ([(8, 0)], "", "mixed_bfloat16"),            # A100
    ([(8, 9)], "", "mixed_bfloat16"),            # L4
    ([(9, 0)], "", "mixed_bfloat16"),            # H100
    ([(7, 5)], "", "mixed_float16"),             # T4: tensor cores, no bf16
    ([(7, 0)], "", "mixed_float16"),             # V100
    ([(6, 0)], "", "float32"),                   # P100
    ([(8, 0), (7, 5)], "", "mixed_float16"),     # mixed: what every GPU can do
    ([], "fpu avx2 avx512_bf16", "mixed_bfloat16"),
    ([], "fpu avx2 amx_bf16", "mixed_bfloat16"),
    ([], "fpu avx2 fma", "float32"),
])
def test_auto_precision_follows_the_device(gpus, flags, policy):
    assert training.precision_for(gpus, flags) == policy
