"""tf.data input for masked-language-model training: tokenise, cut into windows, mask, pad.

Each review is tokenised by `text.BertTokenizer`, then cut into windows of at most
`max_seq_len - 2` word pieces (so `[CLS] window [SEP]` fits): a long review becomes several
windows of near-equal length instead of being truncated, so no text is thrown away. Windows are
cached after tokenisation, and masking runs after the cache, so every epoch sees fresh masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf
import tensorflow_text as text

from imdb_bert import corpus
from imdb_bert.vocab import CLS, MASK, PAD, RESERVED_TOKENS, SEP

PAD_ID, MASK_ID, CLS_ID, SEP_ID = (RESERVED_TOKENS.index(token) for token in (PAD, MASK, CLS, SEP))
SPECIAL_IDS = list(range(len(RESERVED_TOKENS)))
FIRST_TOKEN_ID = len(RESERVED_TOKENS)   # ids from here on are ordinary word pieces


def max_predictions(max_seq_len: int, mask_rate: float) -> int:
    """Slots for masked positions per window: enough for `mask_rate` of a full window, rounded up."""
    return math.ceil((max_seq_len - 2) * mask_rate)


def window_counts(lengths: tf.Tensor, window: int, keep_empty: bool = False) -> tf.Tensor:
    """How many windows of <= `window` tokens each row of `lengths` tokens is cut into."""
    counts = (lengths + window - 1) // window
    return tf.maximum(counts, 1) if keep_empty else counts


def split_into_windows(token_ids: tf.RaggedTensor, window: int, keep_empty: bool = False) -> tf.RaggedTensor:
    """Cut each row of `token_ids` [reviews, (tokens)] into near-equal windows of <= `window` tokens.

    Returns [windows, (tokens)]; every token appears in exactly one window, in order. Empty
    rows give no window, or one empty window with `keep_empty`.
    """
    lengths = token_ids.row_lengths()
    counts = window_counts(lengths, window, keep_empty)
    index = tf.ragged.range(counts)                                      # [reviews, (windows)]
    per_row_lengths = tf.expand_dims(lengths, 1)
    per_row_counts = tf.expand_dims(tf.maximum(counts, 1), 1)
    # The first (length % count) windows of a review take one extra token.
    window_lengths = (per_row_lengths // per_row_counts
                      + tf.cast(index < per_row_lengths % per_row_counts, tf.int64))
    return tf.RaggedTensor.from_row_lengths(token_ids.flat_values, window_lengths.flat_values)


@dataclass(frozen=True)
class MaskingConfig:
    """Which tokens a masked-LM batch hides, and how (BERT: 15%, then 80% [MASK] / 10% random / 10% kept)."""
    mask_rate: float
    mask_token_rate: float
    random_token_rate: float
    max_seq_len: int                  # caps the prediction slots of one window
    whole_word_masking: bool          # select whole words: a word's pieces are masked together


class SeededItemSelector(text.RandomItemSelector):
    """tensorflow-text's `RandomItemSelector` (ceil(`selection_rate` x selectable items) per row, at
    most `max_selections` per row), with stateless draws from `seed`: the same seed and batch
    always select the same items, whatever order a parallel map runs batches in.
    """

    def __init__(self, seed, max_selections: int, selection_rate: float, unselectable_ids):
        super().__init__(max_selections, selection_rate, unselectable_ids)
        self.seed = seed

    def get_selection_mask(self, input_ids, axis=1):
        selectable = self.get_selectable(input_ids, axis)                     # [rows, (items)] bool
        scores = tf.random.stateless_uniform(tf.shape(selectable.flat_values), self.seed)
        scores = selectable.with_flat_values(tf.where(selectable.flat_values, scores, 2.0))
        wanted = tf.math.ceil(tf.reduce_sum(tf.cast(selectable, tf.float32), axis=1) * self.selection_rate)
        wanted = tf.minimum(tf.cast(wanted, tf.int32), self.max_selections_per_batch)
        # Each item's rank by score in its row; the `wanted` lowest scores are selected.
        ranks = tf.argsort(tf.argsort(scores.to_tensor(default_value=3.0), axis=1), axis=1)
        ranks = tf.RaggedTensor.from_tensor(ranks, lengths=selectable.row_lengths())
        return tf.logical_and(ranks < tf.expand_dims(wanted, 1), selectable)


class SeededMaskValuesChooser(text.MaskValuesChooser):
    """tensorflow-text's `MaskValuesChooser` with stateless draws from `seed`, whose random
    replacements are drawn from the ordinary tokens only: a random [PAD] would be hidden from
    attention, a random [CLS] or [SEP] would fake a sequence boundary."""

    def __init__(self, seed, vocab_size: int, mask_token: int, mask_token_rate: float, random_token_rate: float):
        super().__init__(vocab_size, mask_token, mask_token_rate, random_token_rate)
        self.seed, self.mask_share = seed, mask_token_rate   # the base class keeps its rate private

    def get_mask_values(self, masked_lm_ids):
        ids = masked_lm_ids.flat_values
        choose_seed, token_seed = tf.unstack(tf.random.experimental.stateless_split(self.seed, 2))
        draw = tf.random.stateless_uniform(tf.shape(ids), choose_seed)
        random_ids = tf.random.stateless_uniform(tf.shape(ids), token_seed, minval=FIRST_TOKEN_ID,
                                                 maxval=self.vocab_size, dtype=tf.int64)
        values = tf.where(draw < self.mask_share, tf.cast(self.mask_token, ids.dtype),
                          tf.where(draw < self.mask_share + self.random_token_rate,
                                   tf.cast(random_ids, ids.dtype), ids))
        return masked_lm_ids.with_flat_values(values)


def group_words(ids: tf.RaggedTensor, continuation: tf.Tensor) -> tf.RaggedTensor:
    """[rows, (pieces)] -> [rows, (words), (pieces)]: a word is a piece that does not start with `##`
    (`continuation[id]` is False) and the continuation pieces after it. A row's first piece starts a
    word even if it is a continuation (its word began in the previous window)."""
    flat = ids.flat_values
    first = tf.scatter_nd(tf.expand_dims(ids.row_starts(), 1), tf.ones_like(ids.row_starts(), tf.bool),
                          tf.shape(flat, out_type=tf.int64))
    starts = tf.logical_or(first, tf.logical_not(tf.gather(continuation, flat)))
    words = tf.RaggedTensor.from_value_rowids(flat, tf.cumsum(tf.cast(starts, tf.int64)) - 1)
    return tf.RaggedTensor.from_row_lengths(words, tf.math.segment_sum(tf.cast(starts, tf.int64), ids.value_rowids()))


def make_masker(vocab_size: int, masking: MaskingConfig, with_original_ids: bool = False, continuation=None):
    """A function: (ragged window batch, seed [2]) -> (model inputs, masked token labels, label weights).

    Selection (`mask_rate` of the non-special tokens, rounded up; of the words with
    `whole_word_masking`, which needs `continuation`, one bool per vocabulary id saying it is a
    `##` piece) and the 80/10/10 replacement go through tensorflow-text's `mask_language_model`,
    which masks all pieces of a selected word when given [rows, words, pieces]; the draws are
    stateless, from `seed`. Inputs
    are padded to the longest window of the batch (batches come grouped by length, so little
    padding is left); prediction slots to the most selections in the batch, with zero weight.
    With `with_original_ids`, the padded unmasked ids come first in the tuple (for evaluation).
    """
    slots = max_predictions(masking.max_seq_len, masking.mask_rate)
    if masking.whole_word_masking:
        if continuation is None:
            raise ValueError("whole_word_masking needs the vocabulary's continuation flags")
        continuation = tf.constant(continuation, tf.bool)

    def mask(windows: tf.RaggedTensor, seed):
        select_seed, value_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        selector = SeededItemSelector(select_seed, slots, masking.mask_rate, SPECIAL_IDS)
        chooser = SeededMaskValuesChooser(value_seed, vocab_size, MASK_ID, masking.mask_token_rate,
                                          masking.random_token_rate)
        ids, _ = text.combine_segments([windows], start_of_sequence_id=CLS_ID, end_of_segment_id=SEP_ID)
        if masking.whole_word_masking:
            # Returns [rows, (pieces)] again, every piece of a selected word selected.
            masked_ids, positions, labels = text.mask_language_model(group_words(ids, continuation), selector, chooser)
        else:
            masked_ids, positions, labels = text.mask_language_model(ids, selector, chooser)
        # Slots are padded to the batch's most selections, not to the cap: batches are grouped by
        # length, so this leaves ~no empty slot, where a fixed cap left ~25% of the vocabulary
        # head's work (the step's largest part) on padding.
        weights = tf.ones_like(positions, dtype=tf.float32).to_tensor()
        positions, labels = positions.to_tensor(), labels.to_tensor()
        features = {"input_ids": masked_ids.to_tensor(default_value=PAD_ID), "masked_positions": positions}
        if with_original_ids:
            return ids.to_tensor(default_value=PAD_ID), features, labels, weights
        return features, labels, weights

    return mask


def batch_by_length(items: tf.data.Dataset, length_of, batch_size: int, longest: int,
                    drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of `batch_size` items of similar `length_of(item)` (buckets 8 apart up to `longest`),
    padded to their longest member, so padding is rare."""
    boundaries = list(range(8, longest + 1, 8))
    return items.bucket_by_sequence_length(length_of, boundaries, [batch_size] * (len(boundaries) + 1),
                                           pad_to_bucket_boundary=False, drop_remainder=drop_remainder)


def ragged_windows_by_length(windows: tf.data.Dataset, batch_size: int, max_seq_len: int,
                             drop_remainder: bool) -> tf.data.Dataset:
    """Ragged batches of pretraining windows of similar length."""
    return (batch_by_length(windows, tf.size, batch_size, max_seq_len, drop_remainder)
            .map(lambda dense: tf.RaggedTensor.from_tensor(dense, padding=PAD_ID)))


def tokenize_reviews(tokenizer, texts: tf.Tensor) -> tf.RaggedTensor:
    """Word-piece ids [reviews, (pieces)] of a batch of review strings."""
    return tokenizer.tokenize(texts).merge_dims(-2, -1)


def window_dataset(prepared: str, split: str, tokenizer, max_seq_len: int) -> tf.data.Dataset:
    """Pretraining windows (1-D int64 tensors) of one split, tokenised once and cached in memory."""
    window = max_seq_len - 2

    def to_windows(texts):
        return split_into_windows(tokenize_reviews(tokenizer, texts), window)

    return (corpus.load_split(prepared, split)
            .map(lambda example: example["text"])
            .batch(256)
            .map(to_windows, num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch()
            .map(tf.identity)  # unbatched ragged rows are typed ragged; bucketing wants plain tensors
            .cache())


def training_dataset(windows: tf.data.Dataset, masker, batch_size: int, max_seq_len: int,
                     seed: int, start_batch: int = 0) -> tf.data.Dataset:
    """Endless shuffled batches, freshly masked each time a window comes round (dynamic masking).

    `seed` fixes the stream: the shuffle is seeded, batching is in order, and batch number i is
    masked with the stateless seed (seed, i). So the same seed always gives the same batches and
    masks, and `start_batch` (a resumed run's optimizer step) continues the stream exactly where an
    uninterrupted run would be: the skipped batches are only shuffled and grouped, never masked.
    """
    shuffled = windows.shuffle(20_000, seed=seed, reshuffle_each_iteration=True).repeat()
    batches = ragged_windows_by_length(shuffled, batch_size, max_seq_len, drop_remainder=True).skip(start_batch)
    return shard_by_batch(batches.enumerate(start=start_batch)
                          .map(lambda index, batch: masker(batch, tf.stack([tf.cast(seed, tf.int64), index])),
                               num_parallel_calls=tf.data.AUTOTUNE)
                          .prefetch(tf.data.AUTOTUNE))


def shard_by_batch(batches: tf.data.Dataset) -> tf.data.Dataset:
    """Mark `batches` to be shared out batch by batch in a multi-worker run (no effect otherwise).

    Every worker runs the same seeded pipeline and keeps its own share of each global batch
    (tf.distribute's DATA sharding). Sharding by file, the default attempt, would give workers
    unequal numbers of windows, or nothing when there are more workers than prepared shards.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


def released_promptly(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off, for data Keras reads afresh each epoch.

    The autotuning thread of an iterator sleeps ever longer between rounds (up to a minute), and
    deleting the iterator waits out the sleep (`python3 lab/iterator_teardown.py` measures it). Keras
    deletes a validation pass's iterator at the next pass, and an epoch's training iterator at the
    next epoch when `fit` has no `steps_per_epoch`: each deletion stalled training for up to as long
    as the epoch had taken."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def validation_dataset(windows: tf.data.Dataset, masker, batch_size: int, max_seq_len: int,
                       seed: int) -> tf.data.Dataset:
    """Validation batches with one fixed masking: window number i is masked alone with the stateless
    seed (seed, i), so the masks are the same every epoch and every run whatever the batching; the
    masked windows are then grouped by length like the training batches."""
    def mask_one(index, window):
        features, labels, weights = masker(tf.RaggedTensor.from_tensor(window[tf.newaxis, :]),
                                           tf.stack([tf.cast(seed, tf.int64), index]))
        return {name: value[0] for name, value in features.items()}, labels[0], weights[0]

    return released_promptly(shard_by_batch(
        batch_by_length(windows.enumerate().map(mask_one, num_parallel_calls=tf.data.AUTOTUNE),
                        lambda features, labels, weights: tf.size(features["input_ids"]), batch_size, max_seq_len)
        .cache()
        .prefetch(tf.data.AUTOTUNE)))


def encode_phrases(tokenizer, phrases: tf.Tensor) -> tf.RaggedTensor:
    """`[CLS] phrase [SEP]` ids [phrases, (ids)] of a batch of strings, each literal `[MASK]` kept as
    the mask token (any letter case). Pure TensorFlow, so an exported model can run it on raw strings.

    `BertTokenizer` would split a literal "[MASK]" into "[", "mask", "]", so each phrase is split
    on it first, the pieces are tokenised, and the mask id is put back between them.
    """
    phrases = tf.strings.regex_replace(phrases, r"(?i)\[mask\]", MASK)
    pieces = tf.strings.split(phrases, MASK)                                   # [phrases, (pieces)]
    piece_ids = tf.cast(tokenize_reviews(tokenizer, pieces.flat_values), tf.int32)
    mask_after = tf.fill(tf.stack([piece_ids.nrows(), 1]), MASK_ID)
    piece_ids = tf.concat([piece_ids, mask_after], axis=1)                     # every piece + [MASK]
    ids = tf.RaggedTensor.from_row_lengths(piece_ids, pieces.row_lengths()).merge_dims(1, 2)
    lengths = ids.row_lengths()
    before_last = tf.ragged.range(lengths) < tf.expand_dims(lengths - 1, 1)   # drop the last piece's [MASK]
    ids, _ = text.combine_segments([tf.ragged.boolean_mask(ids, before_last)],
                                   start_of_sequence_id=CLS_ID, end_of_segment_id=SEP_ID)
    return tf.cast(ids, tf.int32)


def encode_with_masks(tokenizer, phrase: str) -> list[int]:
    """`[CLS] phrase [SEP]` ids of one phrase, with each literal `[MASK]` kept as the mask token."""
    return encode_phrases(tokenizer, tf.constant([phrase]))[0].numpy().tolist()


def review_windows(tokenizer, texts: tf.Tensor, max_seq_len: int, max_windows: int,
                   head_tail: bool = False) -> tf.RaggedTensor:
    """`[CLS] window [SEP]` ids [reviews, (windows), (ids)] of a batch of reviews, for classifying.

    Reviews are cut into windows the way pretraining cut them; a review longer than `max_windows`
    windows is read up to there, or, with `head_tail`, as its first half and its last half of
    `max_windows` (the end of a review, where the verdict often is, is read too; "How to Fine-Tune
    BERT for Text Classification", Sun et al. 2019). An empty review gives one `[CLS] [SEP]` window.
    """
    token_ids = tokenize_reviews(tokenizer, texts)
    windows = split_into_windows(token_ids, max_seq_len - 2, keep_empty=True)
    ids, _ = text.combine_segments([windows], start_of_sequence_id=CLS_ID, end_of_segment_id=SEP_ID)
    counts = window_counts(token_ids.row_lengths(), max_seq_len - 2, keep_empty=True)
    reviews = tf.RaggedTensor.from_row_lengths(ids, counts)
    head, tail = (max_windows + 1) // 2, max_windows // 2
    if head_tail and tail:
        # The tail is taken from the windows after the head, so a short review has none twice.
        reviews = tf.concat([reviews[:, :head], reviews[:, head:][:, -tail:]], axis=1)
    return tf.cast(reviews[:, :max_windows], tf.int32)
