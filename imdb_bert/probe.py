"""Top-k fills for `[MASK]` tokens, with softmax probabilities, and the per-epoch probe callback.

Each fill is a dict with the original project's keys: `input_text`, `prediction` (the phrase
with that mask filled), `probability` (a real softmax probability, not a logit) and
`predicted mask token`. With several masks, each mask gets its own top-k and a `mask_index`.
"""

from __future__ import annotations

import re

import keras
import numpy as np

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


def top_k_fills(model, tokenizer, tokens: list[str], phrase: str, top_k: int, max_seq_len: int) -> list[dict]:
    """The `top_k` most probable tokens for each `[MASK]` in `phrase`, most probable first."""
    ids = inputs.encode_with_masks(tokenizer, phrase)
    positions = [index for index, token_id in enumerate(ids) if token_id == inputs.MASK_ID]
    if not positions:
        raise StageError(f"no [MASK] in {phrase!r}: write [MASK] where a word should be predicted")
    if len(ids) > max_seq_len:
        raise StageError(f"{phrase[:40]!r}... is {len(ids)} tokens long; the model reads at most {max_seq_len}")
    logits = model({"input_ids": np.array([ids], dtype=np.int32),
                    "masked_positions": np.array([positions], dtype=np.int32)}, training=False)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits[0], axis=-1))
    fills = []
    for mask_index, row in enumerate(probabilities):
        fills += [fill_dict(phrase, mask_index, tokens[token_id], row[token_id], len(positions) > 1)
                  for token_id in np.argsort(-row)[:top_k]]
    return fills


class ProbeCallback(keras.callbacks.Callback):
    """After each epoch, prints the top-k fills of each probe phrase."""

    def __init__(self, tokenizer, tokens: list[str], phrases, top_k: int, max_seq_len: int):
        super().__init__()
        self.tokenizer, self.tokens, self.phrases = tokenizer, tokens, list(phrases)
        self.top_k, self.max_seq_len = top_k, max_seq_len

    def on_epoch_end(self, epoch, logs=None):
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            return  # diverged weights give meaningless fills; the stage reports the NaN
        for phrase in self.phrases:
            for fill in top_k_fills(self.model, self.tokenizer, self.tokens, phrase, self.top_k, self.max_seq_len):
                print(fill)


def load_model(path: str) -> keras.Model:
    """A saved `.keras` file of ours (masked LM or classifier), with our layers and schedules registered."""
    from imdb_bert import classifier, model, training  # noqa: F401  (importing registers them)

    return keras.saving.load_model(path)


def load_run(run_dir: str):
    """(model, tokenizer, tokens, run config dict) of a finished training run folder."""
    import json
    import os

    from imdb_bert import artifacts, vocab

    artifacts.read_manifest(run_dir, "run: python model_training.py (or pass --run FOLDER)")
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        run_config = json.load(handle)
    tokens = vocab.read_vocabulary(os.path.join(run_dir, "vocab.txt"))
    return load_model(os.path.join(run_dir, "model.keras")), vocab.make_tokenizer(tokens), tokens, run_config
