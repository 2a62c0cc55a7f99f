"""How good a trained run is, in numbers that compare across runs with other settings.

Two held-out measures, both on the validation reviews (never trained on):

- **Fixed-protocol masked-token accuracy and perplexity**: every validation window masked once the
  BERT way (15% of the tokens; 80% [MASK], 10% random, 10% kept) with a fixed seed, whatever
  masking rate or scheme the run was trained with. It still depends on the vocabulary: a smaller
  vocabulary makes word pieces easier to guess.
- **Word-level cloze**: sentences from the validation reviews with one whole, frequent word replaced
  by [MASK]. Only words that are a single word piece in the vocabulary of every preset size are
  used, so the question is the same for every run, and the top-1 / top-5 hit rates do not depend
  on the vocabulary. The set is built once per prepared data (seeded) and saved under data/cloze/.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from imdb_bert import artifacts, corpus, vocab

# The evaluation protocol: BERT's masking, one seed, every validation window.
PROTOCOL = {"mask_rate": 0.15, "mask_token_rate": 0.8, "random_token_rate": 0.1, "whole_word_masking": False}
PROTOCOL_SEED = 20_260_101
CLOZE_FILE = "cloze.jsonl"
CLOZE_SENTENCES = 3000
CLOZE_WORDS = 30          # sentence length in words, at most (so even a 64-token model reads them)
_WORD = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def masked_token_scores(model, windows, vocab_size: int, max_seq_len: int, batch_size: int) -> dict:
    """Held-out masked-token accuracy, cross-entropy and perplexity of `model` under the fixed
    protocol, over every window of `windows` (masked positions only)."""
    import tensorflow as tf

    from imdb_bert import inputs

    masker = inputs.make_masker(vocab_size, inputs.MaskingConfig(max_seq_len=max_seq_len, **PROTOCOL))
    data = inputs.validation_dataset(windows, masker, batch_size, max_seq_len, PROTOCOL_SEED)

    # One graph for every batch: called eagerly, the model spends most of an evaluation in Python.
    @tf.function(reduce_retracing=True)
    def sums(features, labels, weights):
        logits = tf.cast(model(features, training=False), tf.float32)
        labels = tf.cast(labels, tf.int32)
        token_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return tf.stack([tf.reduce_sum(correct * weights), tf.reduce_sum(token_entropy * weights), tf.reduce_sum(weights)])

    totals = np.zeros(3)
    for batch in data:
        totals += sums(*batch).numpy()
    hits, entropy, count = (float(total) for total in totals)
    mean = entropy / max(count, 1.0)
    return {"masked_accuracy": hits / max(count, 1.0), "masked_cross_entropy": mean,
            "perplexity": math.exp(min(mean, 50.0)), "masked_tokens": int(count)}


def words_of(text: str) -> list[str]:
    """The lower-cased words and punctuation marks of `text`, split as BERT's basic tokenizer splits them."""
    return _WORD.findall(text.lower())


def cloze_words(train_texts: list[str], vocab_sizes: list[int], min_word_count: int) -> set[str]:
    """Alphabetic words that are one whole word piece in the vocabulary learned from `train_texts` at
    every size in `vocab_sizes`."""
    counts = vocab.count_words(train_texts)
    kept = [(word, count) for word, count in counts.items() if count >= min_word_count]
    whole = None
    for size in vocab_sizes:
        tokens = {token for token in vocab.learn_wordpiece(kept, size) if token.isalpha()}
        whole = tokens if whole is None else whole & tokens
    return whole or set()


def build_cloze_set(held_out_texts: list[str], words: set[str], seed: int, size: int = CLOZE_SENTENCES) -> list[dict]:
    """Up to `size` sentences of the held-out reviews, each with one occurrence of a word of `words`
    replaced by [MASK]: `{"text", "answer"}`. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    candidates = []
    for text in held_out_texts:
        for sentence in _SENTENCE_END.split(text):
            tokens = words_of(sentence)
            if not 6 <= len(tokens) <= CLOZE_WORDS:
                continue
            places = [index for index, token in enumerate(tokens) if token in words]
            if places:
                candidates.append((tokens, places))
    order = rng.permutation(len(candidates))[:size]
    cloze = []
    for index in sorted(order):
        tokens, places = candidates[index]
        place = places[rng.integers(len(places))]
        cloze.append({"text": " ".join(tokens[:place] + [vocab.MASK] + tokens[place + 1:]), "answer": tokens[place]})
    return cloze


def cloze_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "cloze")


def ensure_cloze_set(data_dir: str, prepared_fingerprint: str, vocab_sizes: list[int], min_word_count: int,
                     seed: int) -> list[dict]:
    """The cloze set of the current prepared data: read from data/cloze/, or built there once."""
    folder = cloze_dir(data_dir)
    identity = {"config": {"vocab_sizes": sorted(vocab_sizes), "min_word_count": min_word_count, "seed": seed},
                "inputs": {"prepared": prepared_fingerprint}}
    manifest_path = os.path.join(folder, artifacts.MANIFEST)
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if manifest.get("config") == identity["config"] and manifest.get("inputs") == identity["inputs"]:
            return read_cloze(folder)
    prepared = artifacts.prepared_dir(data_dir)
    words = cloze_words(corpus.split_texts(prepared, "train"), sorted(vocab_sizes), min_word_count)
    cloze = build_cloze_set(corpus.split_texts(prepared, "validation"), words, seed)
    with artifacts.atomic_dir(folder) as work:
        with open(os.path.join(work, CLOZE_FILE), "w", encoding="utf-8") as out:
            out.writelines(json.dumps(item) + "\n" for item in cloze)
        artifacts.write_manifest(work, "cloze", identity, sentences=len(cloze), words=len(words),
                                 source="validation split of data/prepared")
    return cloze


def read_cloze(folder: str) -> list[dict]:
    with open(os.path.join(folder, CLOZE_FILE), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cloze_scores(model, tokenizer, tokens: list[str], cloze: list[dict], max_seq_len: int,
                 batch_size: int = 128) -> dict:
    """Top-1 and top-5 hit rates of the model's fills on the cloze set (sentences longer than the
    model reads are left out and counted)."""
    import tensorflow as tf

    from imdb_bert import inputs, probe

    lengths = inputs.encode_phrases(tokenizer, tf.constant([item["text"] for item in cloze])).row_lengths().numpy()
    usable = [item for item, length in zip(cloze, lengths) if length <= max_seq_len]
    table = tf.constant(tokens)
    top1 = top5 = 0
    for start in range(0, len(usable), batch_size):
        batch = usable[start:start + batch_size]
        outputs = probe.fill_mask_outputs(model, tokenizer, table, tf.constant([item["text"] for item in batch]),
                                          5, max_seq_len)
        guesses = outputs["tokens"].numpy()[:, 0, :]
        for item, row in zip(batch, guesses):
            row = [guess.decode("utf-8") for guess in row]
            top1 += row[0] == item["answer"]
            top5 += item["answer"] in row
    total = max(len(usable), 1)
    return {"cloze_top1": top1 / total, "cloze_top5": top5 / total, "cloze_sentences": len(usable),
            "cloze_too_long": len(cloze) - len(usable)}


def check_run_data(run_dir: str, manifest: dict, data_dir: str, vocab_size: int) -> dict:
    """The current prepared manifest, refusing in one line if the run was trained on other prepared
    data (its held-out reviews may differ) or on an older vocabulary of its own size."""
    from imdb_bert import pipeline

    prepared = artifacts.read_manifest(artifacts.prepared_dir(data_dir), f"run: {pipeline.COMMANDS['data_prep']}")
    if manifest["inputs"].get("prepared") != prepared["fingerprint"]:
        raise artifacts.StageError(f"{run_dir} was trained on other prepared data than {artifacts.prepared_dir(data_dir)} "
                                   f"holds now, so its held-out reviews are not these: {pipeline.rerun('model_training')} "
                                   "with that run's settings")
    vocabulary = artifacts.read_manifest(artifacts.vocab_dir(data_dir), f"run: {pipeline.COMMANDS['tokeniser_build']}")
    if vocabulary.get("vocab_size") == vocab_size and manifest["inputs"].get("vocab") != vocabulary["fingerprint"]:
        raise artifacts.StageError(f"{run_dir} was trained on an older vocabulary than {artifacts.vocab_dir(data_dir)} "
                                   f"holds now: {pipeline.rerun('model_training')} with that run's settings")
    return prepared


def scores_of(model, tokenizer, tokens: list[str], validation_windows, cloze: list[dict], max_seq_len: int,
              batch_size: int) -> dict:
    """Both held-out measures of a model: fixed-protocol masked-token numbers and the cloze hit rates."""
    return {**masked_token_scores(model, validation_windows, len(tokens), max_seq_len, batch_size),
            **cloze_scores(model, tokenizer, tokens, cloze, max_seq_len)}


def evaluate_run(run_dir: str, manifest: dict, vocab_sizes: list[int]) -> dict:
    """Everything `evaluate.py` reports of a finished run folder: its held-out scores, the sentiment
    accuracy when classifier/ exists, and the settings it was trained with."""
    from imdb_bert import inputs, probe

    model, tokenizer, tokens, settings = probe.load_run(run_dir)
    prepared = check_run_data(run_dir, manifest, settings["data_dir"], len(tokens))
    cloze = ensure_cloze_set(settings["data_dir"], prepared["fingerprint"], vocab_sizes,
                             settings["vocab_min_word_count"], PROTOCOL_SEED)
    windows = inputs.window_dataset(artifacts.prepared_dir(settings["data_dir"]), "validation", tokenizer,
                                    settings["max_seq_len"])
    scores = scores_of(model, tokenizer, tokens, windows, cloze, settings["max_seq_len"], settings["batch_size"])
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
        trained = json.load(handle)
    sentiment = os.path.join(artifacts.classifier_dir(run_dir), "metrics.json")
    if os.path.isfile(sentiment):
        with open(sentiment, encoding="utf-8") as handle:
            scores["sentiment_accuracy"] = json.load(handle)["fine_tuned_pretrained"]["accuracy"]
    return {"name": os.path.basename(os.path.normpath(run_dir)), "preset": settings["preset"], "settings": settings,
            "optimizer_steps": trained.get("optimizer_steps"),
            "all_positions_accuracy": trained.get("all_positions_accuracy_original_style"), **scores}
