"""Raw-string SavedModels: the tokenizer and the vocabulary travel inside the model.

A user of an export needs TensorFlow and tensorflow-text (whose ops the tokenizer is made of) but
neither this package nor the vocab file:

    import tensorflow as tf, tensorflow_text  # noqa: F401  (registers the tokenizer's ops)
    sentiment = tf.saved_model.load("runs/cpu/sentiment_export")
    sentiment.signatures["classify"](tf.constant(["what a film"]))["probability_positive"]

Two signatures, one per export:
  fill_mask(sentences [n] string) -> tokens [n, masks, top_k] string, probabilities [n, masks, top_k]
                                     float32 (softmax), mask_count [n] int32 (rows past it are padding)
  classify(reviews [n] string)    -> probability_positive [n] float32, label [n] string ("positive"/"negative")
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from imdb_bert import artifacts, inputs, probe, vocab

EXPORT_INFO = "export.json"


class FillMaskExport(tf.Module):
    """The masked-LM model behind a raw-string `fill_mask` signature."""

    def __init__(self, model: keras.Model, tokens: list[str], max_seq_len: int, top_k: int):
        super().__init__()
        self.model, self.max_seq_len, self.top_k = model, max_seq_len, top_k
        self.tokenizer = vocab.make_tokenizer(tokens)
        self.tokens = tf.constant(tokens)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def fill_mask(self, sentences):
        return probe.fill_mask_outputs(self.model, self.tokenizer, self.tokens, sentences, self.top_k,
                                       self.max_seq_len)


class ClassifyExport(tf.Module):
    """The sentiment classifier behind a raw-string `classify` signature."""

    def __init__(self, model: keras.Model, tokens: list[str], max_seq_len: int, max_windows: int,
                 head_tail: bool = False):
        super().__init__()
        self.model, self.max_seq_len, self.max_windows, self.head_tail = model, max_seq_len, max_windows, head_tail
        self.tokenizer = vocab.make_tokenizer(tokens)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="reviews")])
    def classify(self, reviews):
        windows = inputs.review_windows(self.tokenizer, reviews, self.max_seq_len, self.max_windows, self.head_tail)
        logits = self.model(windows.to_tensor(default_value=inputs.PAD_ID), training=False)
        probability = tf.sigmoid(tf.cast(logits, tf.float32))
        return {"probability_positive": probability,
                "label": tf.where(probability > 0.5, tf.constant("positive"), tf.constant("negative"))}


def save(module: tf.Module, signature: str, folder: str, **info) -> None:
    """Write `module` as a SavedModel serving `signature`, plus export.json describing it and listing
    its files with their sizes and hashes (an export travels alone, so it carries its own check)."""
    tf.saved_model.save(module, folder, signatures={signature: getattr(module, signature)})
    files = artifacts.file_digests(folder)
    with open(os.path.join(folder, EXPORT_INFO), "w", encoding="utf-8") as handle:
        json.dump({"signature": signature, **info, "files": files["files"], "file_sha256": files["file_sha256"]},
                  handle, indent=2)
