"""Top-k fills for `[MASK]` tokens, with softmax probabilities, and the per-epoch probe callback.

Each fill is a dict with the original project's keys: `input_text`, `prediction` (the phrase
with that mask filled), `probability` (a real softmax probability, not a logit) and
`predicted mask token`. With several masks, each mask gets its own top-k and a `mask_index`.
"""

from __future__ import annotations

import json
import os
import re

import keras
import numpy as np
import tensorflow as tf

from imdb_bert import inputs
from imdb_bert.artifacts import StageError
from imdb_bert.vocab import MASK

_MASK_PATTERN = re.compile(re.escape(MASK), re.IGNORECASE)


def fill_phrase(phrase: str, mask_index: int, token: str) -> str:
    """`phrase` with its `mask_index`-th [MASK] replaced by `token` (a ##piece joins the word before)."""
    parts = _MASK_PATTERN.split(phrase)
    before = MASK.join(parts[:mask_index + 1])
    after = MASK.join(parts[mask_index + 1:])
    if token.startswith("##"):
        return before.rstrip() + token[2:] + after
    return before + token + after


def fill_dict(phrase: str, mask_index: int, token: str, probability: float, several_masks: bool) -> dict:
    """One fill in the original project's format (`mask_index` only when the phrase has several masks)."""
    fill = {"input_text": phrase, "prediction": fill_phrase(phrase, mask_index, token),
            "probability": round(float(probability), 6), "predicted mask token": token}
    if several_masks:
        fill["mask_index"] = mask_index
    return fill


def fill_mask_outputs(model, tokenizer, token_strings, sentences, top_k: int, max_seq_len: int) -> dict:
    """The `top_k` most probable tokens of every `[MASK]` in a batch of raw `sentences`, in pure
    TensorFlow: the fill-mask export serves exactly this function, and `top_k_fills` runs it eagerly.

    Returns tokens [n, masks, top_k] (strings from `token_strings`), probabilities [n, masks, top_k]
    (softmax) and mask_count [n] (rows past it are padding). A sentence longer than `max_seq_len`
    word pieces fails the graph's own check (InvalidArgumentError).
    """
    ids = inputs.encode_phrases(tokenizer, sentences)
    too_long = tf.debugging.assert_less_equal(ids.row_lengths(), tf.cast(max_seq_len, tf.int64),
                                              message=f"a sentence is longer than {max_seq_len} word pieces")
    with tf.control_dependencies([too_long]):   # check before the model sees an impossible position
        ids = ids.to_tensor(default_value=inputs.PAD_ID)
    where = tf.where(tf.equal(ids, inputs.MASK_ID))                               # [masks, (row, col)]
    positions = tf.RaggedTensor.from_value_rowids(tf.cast(where[:, 1], tf.int32), where[:, 0],
                                                  nrows=tf.shape(ids, out_type=tf.int64)[0])
    logits = model({"input_ids": ids, "masked_positions": positions.to_tensor()}, training=False)
    probabilities, token_ids = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32)), k=top_k)
    return {"tokens": tf.gather(token_strings, token_ids), "probabilities": probabilities,
            "mask_count": tf.cast(positions.row_lengths(), tf.int32)}


def fills_from_outputs(sentences: list[str], outputs: dict) -> list[dict]:
    """`fill_mask_outputs` (as numpy) as the original project's fill dicts, most probable first per mask."""
    fills = []
    for row, sentence in enumerate(sentences):
        count = int(outputs["mask_count"][row])
        if count == 0:
            raise StageError(f"no [MASK] in {sentence!r}: write [MASK] where a word should be predicted")
        for mask_index in range(count):
            fills += [fill_dict(sentence, mask_index, token.decode("utf-8"), probability, count > 1)
                      for token, probability in zip(outputs["tokens"][row][mask_index],
                                                    outputs["probabilities"][row][mask_index])]
    return fills


def top_k_fills(model, tokenizer, tokens: list[str], phrase: str, top_k: int, max_seq_len: int) -> list[dict]:
    """The `top_k` most probable tokens for each `[MASK]` in `phrase`, most probable first."""
    try:
        outputs = fill_mask_outputs(model, tokenizer, tf.constant(tokens), tf.constant([phrase]), top_k, max_seq_len)
    except tf.errors.InvalidArgumentError:
        raise StageError(f"{phrase[:40]!r}... is too long: the model reads at most {max_seq_len} word pieces") from None
    return fills_from_outputs([phrase], {name: value.numpy() for name, value in outputs.items()})


class ProbeCallback(keras.callbacks.Callback):
    """After each epoch, prints the top-k fills of each probe phrase, and appends them as one JSON
    line `{"epoch": n, "fills": [...]}` to `history_path` (kept across a resumed run) when given."""

    def __init__(self, tokenizer, tokens: list[str], phrases, top_k: int, max_seq_len: int,
                 history_path: str | None = None):
        super().__init__()
        self.tokenizer, self.tokens, self.phrases = tokenizer, tokens, list(phrases)
        self.top_k, self.max_seq_len, self.history_path = top_k, max_seq_len, history_path

    def on_epoch_end(self, epoch, logs=None):
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            return  # diverged weights give meaningless fills; the stage reports the NaN
        fills = [fill for phrase in self.phrases
                 for fill in top_k_fills(self.model, self.tokenizer, self.tokens, phrase, self.top_k, self.max_seq_len)]
        for fill in fills:
            print(fill)
        if self.history_path:
            with open(self.history_path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"epoch": epoch + 1, "fills": fills}) + "\n")


def read_probe_history(path: str) -> list[dict]:
    """The per-epoch probe lines of a run, the last line of each epoch kept (a resumed epoch is redone)."""
    if not os.path.isfile(path):
        return []
    by_epoch = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                by_epoch[entry["epoch"]] = entry
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def load_model(path: str) -> keras.Model:
    """A saved `.keras` file of ours (masked LM or classifier), with our layers and schedules registered."""
    from imdb_bert import classifier, model, training  # noqa: F401  (importing registers them)

    return keras.saving.load_model(path)


def load_run(run_dir: str):
    """(model, tokenizer, tokens, run config dict) of a finished training run folder. The caller checks
    the folder first (`pipeline.read_run`, before TensorFlow starts), so it is hashed once per command."""
    from imdb_bert import vocab

    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        run_config = json.load(handle)
    tokens = vocab.read_vocabulary(os.path.join(run_dir, "vocab.txt"))
    return load_model(os.path.join(run_dir, "model.keras")), vocab.make_tokenizer(tokens), tokens, run_config
