"""A frozen-encoder probe: how much sentiment each layer's representation holds, without fine-tuning.

The encoder is not trained. Each review's features at one layer are the mean of that layer's hidden
states over the review's real tokens (all its windows); a logistic regression (one Keras Dense unit
on standardised features, L2-regularised, trained to convergence on the whole sample at once) is
fitted on a fixed number of labelled training reviews and scored on the dev split. It costs one
forward pass over a few thousand reviews, so a recipe study can screen encoders with it; a random
encoder of the same shape is the floor it must beat.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from imdb_bert import classifier

DEV_REVIEWS = 2000   # a class-balanced sample of the labelled dev reviews scores the probe
SAMPLE_SEED = 0      # one training sample for every run probed, whatever its own seed


def representation_layers(encoder: keras.Model) -> list[str]:
    """The encoder's representation after the embeddings, after each block and (pre-LN) after the final norm."""
    names = [layer.name for layer in encoder.layers
             if layer.name in ("position_embedding", "embedding_norm") or layer.name.startswith("block_")
             or layer.name == "final_norm"]
    if "embedding_norm" in names:
        names.remove("position_embedding")
    return names


def representation_model(encoder: keras.Model) -> tuple[list[str], keras.Model]:
    """(`representation_layers`, a model sharing the encoder's weights that returns each of their outputs)."""
    names = representation_layers(encoder)
    return names, keras.Model(encoder.input, [encoder.get_layer(name).output for name in names], name="encoder_layers")


def review_sets(prepared: str, tokenizer, labels: int, max_seq_len: int, max_windows: int, head_tail: bool,
                batch_size: int, seed: int = SAMPLE_SEED) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(train, dev) batches of (windows, label): a class-balanced sample of `labels` labelled training
    reviews (label_efficiency.balanced_sample) and a class-balanced sample of DEV_REVIEWS labelled dev reviews."""
    from lab import label_efficiency

    reviews = classifier.labelled_reviews(prepared, "train")
    every_label = label_efficiency.labels_of(reviews)
    sample = label_efficiency.select(reviews, label_efficiency.balanced_sample(every_label, labels, seed), len(every_label))
    return tuple(classifier.batches(classifier.labelled_review_windows(part, tokenizer, max_seq_len, max_windows,
                                                                       head_tail),
                                    batch_size, max_seq_len * max_windows)
                 for part in (sample, label_efficiency.balanced_part(classifier.labelled_reviews(prepared, "dev"),
                                                                DEV_REVIEWS)[0]))


def review_features(encoder: keras.Model, batches: tf.data.Dataset) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({layer name: [reviews, hidden] mean-pooled features}, labels) of (windows, label) batches."""
    names, layers_model = representation_model(encoder)
    pool = classifier.MeanOverReview()

    @tf.function(reduce_retracing=True)
    def features_of(windows):
        flat = tf.reshape(windows, (-1, tf.shape(windows)[-1]))
        return [pool(hidden, windows) for hidden in layers_model(flat, training=False)]

    features, labels = {name: [] for name in names}, []
    for windows, label in batches:
        for name, values in zip(names, features_of(windows)):
            features[name].append(values.numpy())
        labels.append(label.numpy())
    return {name: np.concatenate(values) for name, values in features.items()}, np.concatenate(labels)


def logistic_regression_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                                 seed: int = 0) -> float:
    """Accuracy on (test_x, test_y) of a logistic regression fitted on (train_x, train_y)."""
    kernel, bias = classifier.fit_logistic_regression(train_x, train_y, seed)
    return float(np.mean((test_x.astype(np.float64) @ kernel + bias > 0) == (test_y == 1)))


def best(accuracies: dict[str, float]) -> tuple[str, float]:
    """(layer, dev accuracy) of the layer that scored best."""
    layer = max(accuracies, key=accuracies.get)
    return layer, accuracies[layer]


def probe(encoder: keras.Model, train: tf.data.Dataset, dev: tf.data.Dataset) -> dict[str, float]:
    """{layer name: dev accuracy of the logistic regression on that layer's features}."""
    train_features, train_labels = review_features(encoder, train)
    dev_features, dev_labels = review_features(encoder, dev)
    return {name: logistic_regression_accuracy(train_features[name], train_labels, dev_features[name], dev_labels)
            for name in train_features}
