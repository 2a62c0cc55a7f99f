"""Sentiment classification on top of the pretrained encoder, and a bag-of-words baseline.

A review is read whole (up to `classifier_max_windows` windows of `max_seq_len`, cut as in
pretraining): the encoder runs on every window, the hidden states of all real tokens of the
review are averaged, and one logit says positive (> 0) or negative. Averaging tokens, not a
`[CLS]` vector, because pretraining (masked LM only) never taught `[CLS]` anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from imdb_bert import artifacts, corpus, inputs, training

SPLITS = ("train", "dev", "validation")   # fit, pick the epoch, score once (held out)


def labelled_reviews(prepared: str, split: str) -> tf.data.Dataset:
    """(text, label) pairs of one split's labelled reviews (unlabelled ones are skipped)."""
    return (corpus.load_split(prepared, split)
            .filter(lambda example: example["label"] >= 0)
            .map(lambda example: (example["text"], example["label"])))


def labelled_review_windows(reviews: tf.data.Dataset, tokenizer, max_seq_len: int, max_windows: int,
                            head_tail: bool = False) -> tf.data.Dataset:
    """(windows [w, s] int32, label) per review (`inputs.review_windows`), tokenised once and cached."""
    def to_windows(texts, labels):
        return inputs.review_windows(tokenizer, texts, max_seq_len, max_windows, head_tail), labels

    return (reviews.batch(256)
            .map(to_windows, num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch()
            .map(lambda windows, label: (windows.to_tensor(default_value=inputs.PAD_ID), label))
            .cache())


def labelled_counts(splits: dict) -> dict[str, int]:
    """Labelled reviews per split, from data_prep's manifest counts; StageError if a split has none."""
    counts = {split: splits[split]["labels"]["pos"] + splits[split]["labels"]["neg"] for split in SPLITS}
    for split, count in counts.items():
        if count == 0:
            raise artifacts.StageError(f"no labelled reviews in the {split} split: the classifier needs labelled "
                                       "data (source package, official or tfds)")
    return counts


def batches(windows: tf.data.Dataset, batch_size: int, longest: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of `batch_size` reviews of similar length (padded to [reviews, windows, ids]; `longest`
    is the most ids a review holds); shuffled each epoch when `shuffle_seed` is given."""
    if shuffle_seed is not None:
        windows = windows.shuffle(25_000, seed=shuffle_seed, reshuffle_each_iteration=True)
    return inputs.released_promptly(inputs.batch_by_length(windows, lambda review, label: tf.size(review),
                                                           batch_size, longest).prefetch(tf.data.AUTOTUNE))


@keras.saving.register_keras_serializable(package="imdb_bert")
class FlattenWindows(layers.Layer):
    """[reviews, windows, ids] -> [reviews * windows, ids], so the encoder sees plain sequences."""

    def call(self, windows):
        return ops.reshape(windows, (-1, ops.shape(windows)[-1]))

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])


@keras.saving.register_keras_serializable(package="imdb_bert")
class MeanOverReview(layers.Layer):
    """Mean of the hidden states of a review's real tokens, over all its windows -> [reviews, hidden]."""

    def call(self, hidden, windows):
        real = ops.cast(ops.not_equal(windows, inputs.PAD_ID), "float32")
        real = ops.reshape(real, (ops.shape(windows)[0], -1, 1))                       # [reviews, w*s, 1]
        hidden = ops.reshape(ops.cast(hidden, "float32"), (ops.shape(windows)[0], -1, ops.shape(hidden)[-1]))
        return ops.sum(hidden * real, axis=1) / ops.maximum(ops.sum(real, axis=1), 1.0)

    def compute_output_shape(self, hidden_shape, windows_shape):
        return (windows_shape[0], hidden_shape[-1])


@keras.saving.register_keras_serializable(package="imdb_bert")
class SentimentClassifier(keras.Model):
    """Review windows [reviews, windows, ids] -> one sentiment logit per review (> 0: positive): the
    encoder, the mean of its states over the review's real tokens, dropout and a one-logit head."""

    def __init__(self, encoder: keras.Model, dropout: float = 0.1, **kwargs):
        windows = keras.Input(shape=(None, None), dtype="int32", name="windows")
        policy = encoder.layer_policy
        flat = FlattenWindows(name="flatten_windows", dtype=policy)(windows)
        pooled = MeanOverReview(name="mean_over_review", dtype=policy)(encoder(flat), windows)
        pooled = layers.Dropout(dropout, name="classifier_dropout", dtype=policy)(pooled)
        logit = layers.Dense(1, name="sentiment", dtype="float32")(pooled)
        super().__init__(windows, ops.squeeze(logit, -1), **{"name": "sentiment_classifier", **kwargs})
        self.encoder, self.dropout_rate = encoder, dropout

    def get_config(self):
        return {"name": self.name, "dropout": self.dropout_rate, "encoder": keras.saving.serialize_keras_object(self.encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.pop("pooling", "mean") != "mean":   # saved before the other poolings were dropped
            raise artifacts.StageError("this classifier pools other than by the mean, which this version no longer "
                                       "builds: rerun python classifier_training.py --force")
        config.pop("cloze", None)
        return cls(keras.saving.deserialize_keras_object(config.pop("encoder")), **config)


def compile_classifier(model: SentimentClassifier, learning_rate: float, total_steps: int,
                       weight_decay: float = 0.01) -> None:
    """AdamW with a 10% linear warm-up and cosine decay; binary cross-entropy on the logit."""
    warmup = max(total_steps // 10, 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps - warmup, 1), alpha=0.0)
    model.compile(optimizer=training.adamw(schedule, weight_decay, model.encoder),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)])


def best_epoch_on_dev(epochs: int) -> keras.callbacks.EarlyStopping:
    """A callback that keeps the weights of the epoch with the best dev accuracy (`validation_data` of
    `fit` is the dev split) and restores them when training ends; it never stops early."""
    return keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=epochs,
                                         restore_best_weights=True, verbose=0)


def evaluate_picked(model: keras.Model, held_out: tf.data.Dataset, picked: keras.callbacks.EarlyStopping) -> dict:
    """`evaluate` on the held-out reviews, with the epoch `best_epoch_on_dev` kept and its dev accuracy."""
    return {**evaluate(model, held_out), "epoch_picked_on_dev": picked.best_epoch + 1, "dev_accuracy": float(picked.best)}


def evaluate(model: keras.Model, data: tf.data.Dataset) -> dict:
    """`scores` of a logit model on (inputs, label) batches."""
    labels, logits = [], []
    for features, label in data:
        # Keras's compiled predict step, kept on the model: called eagerly, the model spends most of a
        # scoring pass in Python.
        logits.append(np.asarray(model.predict_on_batch(features)).reshape(-1))
        labels.append(label.numpy().reshape(-1))
    return scores(np.concatenate(labels), np.concatenate(logits))


def scores(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy, mean loss and confusion matrix of logits (> 0: positive) against 0/1 labels.

    The confusion matrix rows are the true labels (negative, positive), columns the predictions.
    """
    logits = logits.astype(np.float64)
    predicted = (logits > 0).astype(np.int64)
    # Binary cross-entropy from logits, computed stably.
    loss = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    confusion = [[int(np.sum((labels == truth) & (predicted == guess))) for guess in (0, 1)] for truth in (0, 1)]
    return {"accuracy": float(np.mean(predicted == labels)), "loss": float(loss), "reviews": int(labels.size),
            "confusion_matrix": {"rows_true_cols_predicted": ["negative", "positive"], "counts": confusion}}


@dataclass(frozen=True)
class FineTuneConfig:
    """How the classifier is trained; the pipeline's `classifier_*` values (config.py)."""
    classifier_learning_rate: float
    classifier_dropout: float
    classifier_weight_decay: float
    classifier_probe_first: bool


def fine_tune(masked_lm: keras.Model, settings: FineTuneConfig, train: tf.data.Dataset, dev: tf.data.Dataset,
              epochs: int, steps_per_epoch: int, callbacks: list | None = None, verbose: int = 2):
    """The classifier on the encoder of `masked_lm` trained on `train` for `epochs`, with the weights
    of the epoch of the best dev accuracy restored: (model, the `best_epoch_on_dev` callback, dev
    accuracy per epoch)."""
    model = SentimentClassifier(masked_lm.encoder, settings.classifier_dropout)
    if settings.classifier_probe_first:
        fit_head_on_frozen_encoder(model, train)
    compile_classifier(model, settings.classifier_learning_rate, steps_per_epoch * epochs, settings.classifier_weight_decay)
    best = best_epoch_on_dev(epochs)
    history = model.fit(train, validation_data=dev, epochs=epochs, verbose=verbose, shuffle=False,
                        callbacks=[*(callbacks or []), best])
    return model, best, history.history["val_accuracy"]


# A logistic regression on pooled features (the frozen probe's, and the head LP-FT starts from): L2 on
# standardised features, full-batch Adam steps to convergence.
LOGISTIC_L2, LOGISTIC_STEPS = 1e-3, 300


def fit_logistic_regression(train_x: np.ndarray, train_y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """(kernel [features], bias) of a logistic regression fitted on (train_x, train_y): trained on
    standardised features, returned for the raw ones (the standardisation folded into the weights)."""
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((train_x.shape[1],)),
                              keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(LOGISTIC_L2), dtype="float32")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    # LOGISTIC_STEPS full-batch steps in one epoch: as many epochs of one step each spend most of their time in
    # Keras' per-epoch work, not in the step.
    full_batch = tf.data.Dataset.from_tensors(((train_x - mean) / scale, train_y.astype("float32")))
    model.fit(full_batch.repeat(LOGISTIC_STEPS), epochs=1, verbose=0)
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in model.layers[0].weights)
    kernel = kernel.reshape(-1) / scale
    return kernel, float(bias[0] - np.dot(kernel, mean))


def fit_head_on_frozen_encoder(model: SentimentClassifier, train: tf.data.Dataset) -> None:
    """Set the sentiment head to a logistic regression fitted on the frozen encoder's pooled features of
    one pass over `train`, so fine-tuning starts from a head that already reads the encoder instead of a
    random one (LP-FT: Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features")."""
    pooled = keras.Model(model.input, model.get_layer("classifier_dropout").input)
    features, labels = zip(*((keras.ops.convert_to_numpy(pooled(windows, training=False)), label.numpy())
                             for windows, label in train))
    kernel, bias = fit_logistic_regression(np.concatenate(features).astype(np.float64), np.concatenate(labels))
    model.get_layer("sentiment").set_weights([kernel[:, None].astype("float32"), np.array([bias], "float32")])


def texts_and_labels(reviews: tf.data.Dataset) -> tuple[list[str], np.ndarray]:
    """The (text, label) reviews as a list of strings and an array of 0/1 labels."""
    pairs = [(text.decode("utf-8"), int(label)) for text, label in reviews.as_numpy_iterator()]
    return [text for text, _ in pairs], np.array([label for _, label in pairs], np.int64)


# What fit_bag_of_words builds, beside it so the two change together (the label curve's fit cache
# keys its bag-of-words fits by it: a changed model refits).
BAG_OF_WORDS = {"ngram_range": (1, 2), "max_features": 30_000, "sublinear_tf": True, "max_iter": 1_000}


def fit_bag_of_words(reviews: tf.data.Dataset):
    """Logistic regression on TF-IDF of words and word pairs (scikit-learn), vocabulary and weights
    fitted on the (text, label) `reviews`: L-BFGS to convergence, no rate or epochs to choose."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    words = {key: BAG_OF_WORDS[key] for key in ("ngram_range", "max_features", "sublinear_tf")}
    model = make_pipeline(TfidfVectorizer(**words), LogisticRegression(max_iter=BAG_OF_WORDS["max_iter"]))
    return model.fit(*texts_and_labels(reviews))


def evaluate_bag_of_words(model, reviews: tf.data.Dataset) -> dict:
    """`scores` of a fitted bag of words on (text, label) reviews."""
    texts, labels = texts_and_labels(reviews)
    return scores(labels, model.decision_function(texts))


def bag_of_words_baseline(prepared: str) -> dict:
    """The bag of words fitted on the train split and scored on the held-out reviews."""
    print("classifier_training: bag of words: TF-IDF of words and word pairs + logistic regression (scikit-learn)")
    result = evaluate_bag_of_words(fit_bag_of_words(labelled_reviews(prepared, "train")),
                                   labelled_reviews(prepared, "validation"))
    print(f"classifier_training: bag of words: held-out accuracy {result['accuracy']:.4f}")
    return result


def record_study_row(path: str, identity: dict, settings: dict, best, dev_accuracies: list[float],
                     seconds: float) -> dict:
    """Append one row of the fine-tuning study to the CSV at `path`: the run, the `settings`, the dev
    accuracy of every epoch and the epoch picked."""
    row = {**identity, **settings,
           "dev_accuracy_per_epoch": " ".join(f"{value:.4f}" for value in dev_accuracies),
           "epoch_picked": best.best_epoch + 1, "dev_accuracy": round(float(best.best), 4),
           "minutes": round(seconds / 60, 1), "date": time.strftime("%Y-%m-%d")}
    artifacts.append_row(path, row)
    print(f"classifier_training: dev accuracy {row['dev_accuracy']} (epoch {row['epoch_picked']}); "
          f"per epoch {row['dev_accuracy_per_epoch']}; {row['minutes']} min -> {path}")
    return row
