"""The WordPiece vocabulary: reserved tokens, learning it from text, and the tokenizer that reads it.

Learning follows tensorflow-text's `bert_vocab_from_dataset`, in two faster steps: words are
counted with the same `BasicTokenizer` in large batches, and words seen fewer than
`min_word_count` times are dropped before the (pure-Python) WordPiece learner runs. A word that
rare cannot earn its own entry anyway; it only slowed the learner down.
"""

from __future__ import annotations

import collections
import math
import time

import numpy as np

from imdb_bert import artifacts, pipeline

PAD, UNK, MASK, CLS, SEP = "[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"
RESERVED_TOKENS = [PAD, UNK, MASK, CLS, SEP]   # ids 0..4, [PAD] must be 0 (padding value)

# Lower-casing (and accent stripping) happens here and only here, for learning and tokenising alike.
TOKENIZER_PARAMS = dict(lower_case=True)


def count_words(texts: list[str], batch_size: int = 1024) -> collections.Counter:
    """Word counts of `texts` after the BERT basic tokenisation (lower-case, split punctuation).

    Batches are tokenised and counted (`tf.unique_with_counts`) in a parallel tf.data map; only the
    per-batch distinct words come back to Python, not every word (docs/design.md has the timing).
    """
    import tensorflow as tf

    from imdb_bert import private_apis
    from imdb_bert.monitoring import progress

    basic = private_apis.basic_tokenizer(**TOKENIZER_PARAMS)

    def count_batch(batch):
        words, _, counts = tf.unique_with_counts(basic.tokenize(batch).flat_values)
        return words, counts

    batches = (tf.data.Dataset.from_tensor_slices(tf.constant(texts, dtype=tf.string)).batch(batch_size)
               .map(count_batch, num_parallel_calls=tf.data.AUTOTUNE))
    counts = collections.Counter()
    for words, frequency in progress(batches.as_numpy_iterator(), "counting words", unit="batch",
                                     total=math.ceil(len(texts) / batch_size)):
        counts.update(dict(zip(words.tolist(), frequency.tolist())))
    return collections.Counter({word.decode("utf-8"): count for word, count in counts.items()})


def learn_wordpiece(word_counts: list[tuple[str, int]], vocab_size: int) -> list[str]:
    """Exactly `vocab_size` WordPiece tokens (fewer only if the corpus cannot fill it).

    tensorflow-text's learner keeps every sub-word seen at least `threshold` times and
    binary-searches that threshold linearly between 10 and 10 million, stopping 0-5% *under* the
    target: ~20 full passes over the words, and a 30k target is out of reach when the
    threshold cannot go below 10. Here the threshold is predicted instead: the vocabulary a
    threshold gives is close to a steady multiple of the number of *words* seen that often, so
    each pass aims (through that multiple, re-measured after every pass) at a vocabulary 2.5% over
    the target, and the search stops at the first one 0-5% over. It usually takes two passes;
    a bracket on the threshold keeps it finite. The least frequent tokens (the learner lists tokens
    by falling count) are then dropped to hit the target exactly, never a single character or its
    `##` continuation, so every word stays spellable. A target too small to hold those is refused
    before any learning pass.
    """
    from imdb_bert import private_apis

    learner = private_apis.wordpiece_learner()

    params = learner.Params(upper_thresh=None, lower_thresh=None, num_iterations=4, max_input_tokens=-1,
                            max_token_length=50, max_unique_chars=1000, vocab_size=vocab_size,
                            slack_ratio=0.05, include_joiner_token=True, joiner="##",
                            reserved_tokens=RESERVED_TOKENS)
    words = learner.get_input_words(word_counts, RESERVED_TOKENS, params.max_token_length)
    words = learner.filter_input_words(words, learner.get_allowed_chars(words, params.max_unique_chars),
                                       params.max_input_tokens)
    characters = learner.extract_char_tokens(words)
    spelling = set(characters) | {"##" + character for character in characters}
    if vocab_size < len(RESERVED_TOKENS) + len(spelling):
        raise artifacts.StageError(
            f"vocab_size {vocab_size} is too small to hold the {len(RESERVED_TOKENS) + len(spelling)} reserved and "
            "single-character tokens this corpus needs: set a larger vocab_size")
    counts = np.sort(np.array([count for _, count in words]))[::-1]        # most frequent first

    def words_at_least(threshold: int) -> int:
        return int(np.searchsorted(-counts, -threshold, side="right"))

    aim = vocab_size * (1 + params.slack_ratio / 2)
    low, high = 1, int(counts[0]) + 1          # size(low) >= target > size(high), assumed
    ratio, best = 1.2, None
    while high - low > 1:
        # The largest threshold whose predicted vocabulary (ratio x words) still reaches the aim.
        wanted_words = min(int(aim / ratio), len(counts))
        threshold = int(counts[max(wanted_words - 1, 0)])
        threshold = min(max(threshold, low + 1), high - 1)
        tokens = learner.learn_with_thresh(words, threshold, params)
        ratio = len(tokens) / max(words_at_least(threshold), 1)
        if len(tokens) >= vocab_size:
            low, best = threshold, tokens
            if len(tokens) <= vocab_size * (1 + params.slack_ratio):
                break
        else:
            high = threshold
    if best is None:   # even threshold 2 fell short: the corpus is small, take all it offers
        best = learner.learn_with_thresh(words, 1, params)
    return trim_keeping_spelling(best, vocab_size, spelling)


def trim_keeping_spelling(tokens: list[str], vocab_size: int, spelling: set[str]) -> list[str]:
    """The first `vocab_size` of `tokens` (reserved first, then by falling count), except that
    every token of `spelling` (single characters and their continuations) is kept: the least
    frequent other tokens make room for them."""
    reserved = [token for token in tokens if token in RESERVED_TOKENS]
    room = vocab_size - len(reserved) - len(spelling)
    kept = []
    for token in tokens:
        if token in RESERVED_TOKENS or token in spelling:
            kept.append(token)
        elif room > 0:
            kept.append(token)
            room -= 1
    return kept + sorted(spelling - set(kept))


def learn_vocabulary(texts: list[str], vocab_size: int, min_word_count: int) -> tuple[list[str], dict]:
    """A WordPiece vocabulary of `vocab_size` entries, reserved tokens first, plus statistics."""
    started = time.time()
    counts = count_words(texts)
    counted = time.time()
    kept = [(word, count) for word, count in counts.items() if count >= min_word_count]
    tokens = learn_wordpiece(kept, vocab_size)
    stats = {"distinct_words": len(counts), "words_learned_from": len(kept),
             "count_seconds": round(counted - started, 2), "learn_seconds": round(time.time() - counted, 2)}
    return tokens, stats


def write_vocabulary(path: str, tokens: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(tokens) + "\n")


def read_vocabulary(path: str) -> list[str]:
    """The tokens of a vocab file, checked to start with the reserved tokens; StageError if not."""
    try:
        with open(path, encoding="utf-8") as handle:
            tokens = handle.read().splitlines()
    except FileNotFoundError:
        raise artifacts.StageError(f"{path} is missing: run {pipeline.COMMANDS['tokeniser_build']}") from None
    if tokens[:len(RESERVED_TOKENS)] != RESERVED_TOKENS:
        missing = [token for token in RESERVED_TOKENS if token not in tokens]
        problem = f"lacks {', '.join(missing)}" if missing else "has the reserved tokens out of order"
        raise artifacts.StageError(f"{path} {problem} (want {' '.join(RESERVED_TOKENS)} as ids 0-4): "
                                   + pipeline.rerun("tokeniser_build", "--force"))
    return tokens


def make_tokenizer(tokens: list[str]):
    """A `text.BertTokenizer` over an in-memory vocabulary (ids as in `tokens`)."""
    import tensorflow as tf
    import tensorflow_text as text

    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(tokens), tf.range(len(tokens), dtype=tf.int64)),
        num_oov_buckets=1)
    return text.BertTokenizer(table, token_out_type=tf.int64, unknown_token=UNK, **TOKENIZER_PARAMS)


def unknown_rate(tokenizer, texts: list[str], batch_size: int = 1024) -> float:
    """Share of word pieces that come out as [UNK] when `texts` are tokenised."""
    unknown_id = RESERVED_TOKENS.index(UNK)
    unknown = total = 0
    for start in range(0, len(texts), batch_size):
        ids = tokenizer.tokenize(texts[start:start + batch_size]).flat_values.numpy()
        unknown += int((ids == unknown_id).sum())
        total += ids.size
    return unknown / max(total, 1)
