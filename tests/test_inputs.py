import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import config
from conftest import ROOT, masker_for
from imdb_bert import inputs, vocab


@pytest.fixture(scope="module")
def tokens(fixture_reviews):
    return vocab.learn_vocabulary([text for text, _ in fixture_reviews], vocab_size=1500, min_word_count=2)[0]


@pytest.fixture(scope="module")
def windows(tokens, fixture_reviews):
    tokenizer = vocab.make_tokenizer(tokens)
    ids = inputs.tokenize_reviews(tokenizer, tf.constant([text for text, _ in fixture_reviews]))
    return inputs.split_into_windows(ids, 126)


def test_windows_keep_every_token_in_order():
    ids = tf.ragged.constant([[1, 2, 3, 4, 5, 6, 7], [8], [], [9, 10, 11]], dtype=tf.int64)
    got = inputs.split_into_windows(ids, 3).to_list()
    assert got == [[1, 2, 3], [4, 5], [6, 7], [8], [9, 10, 11]]


def test_head_tail_reads_the_start_and_the_end_of_a_long_review_once(tokens):
    tokenizer = vocab.make_tokenizer(tokens)
    words = [f"the film{number}" for number in range(60)]   # each number makes the windows different
    review = " ".join(words)

    def windows(max_windows, head_tail):
        return inputs.review_windows(tokenizer, tf.constant([review, "a good film"]), 8, max_windows,
                                     head_tail).to_list()

    every = windows(1000, False)[0]
    assert len(every) > 10
    assert windows(4, True)[0] == every[:2] + every[-2:]
    assert windows(5, True)[0] == every[:3] + every[-2:]
    assert windows(4, False)[0] == every[:4]
    assert windows(1, True)[0] == every[:1]
    # A review of fewer windows than max_windows is read whole, each window once.
    assert windows(4, True)[1] == windows(4, False)[1] == windows(1000, False)[1]
    assert windows(len(every) + 3, True)[0] == every


def test_real_reviews_become_near_equal_windows_without_loss(windows, tokens, fixture_reviews):
    lengths = windows.row_lengths().numpy()
    assert lengths.max() <= 126 and lengths.min() > 0
    tokenizer = vocab.make_tokenizer(tokens)
    total = inputs.tokenize_reviews(tokenizer, tf.constant([t for t, _ in fixture_reviews])).flat_values.shape[0]
    assert lengths.sum() == total          # nothing is truncated
    assert len(lengths) > len(fixture_reviews)  # long reviews became several windows


def test_masking_statistics_over_a_large_sample(windows, tokens):
    settings = config.make_config("tiny", {"max_seq_len": "128"})
    masker = masker_for(settings, len(tokens), with_original_ids=True)
    selected = selectable = as_mask = unchanged = 0
    for draw in range(8):   # ~18k windows, ~270k selectable tokens
        original, features, labels, weights = masker(windows, tf.constant([1, draw]))
        original, masked = original.numpy(), features["input_ids"].numpy()
        positions, weights = features["masked_positions"].numpy(), weights.numpy()
        rows = np.repeat(np.arange(len(positions))[:, None], positions.shape[1], axis=1)[weights > 0]
        columns = positions[weights > 0]
        picked_original = original[rows, columns]
        assert not np.isin(picked_original, inputs.SPECIAL_IDS).any()   # never [CLS], [SEP], [PAD]...
        assert (labels.numpy()[weights > 0] == picked_original).all()
        selected += len(columns)
        selectable += int((~np.isin(original, inputs.SPECIAL_IDS)).sum())
        as_mask += int((masked[rows, columns] == inputs.MASK_ID).sum())
        unchanged += int((masked[rows, columns] == picked_original).sum())
        changed = masked != original
        changed[rows, columns] = False
        assert not changed.any()             # nothing outside the selection is touched
    assert abs(selected / selectable - 0.15) < 0.01
    assert abs(as_mask / selected - 0.80) < 0.02
    assert abs(unchanged / selected - 0.10) < 0.02
    assert abs((selected - as_mask - unchanged) / selected - 0.10) < 0.02


def test_masked_slots_and_padding(windows, tokens, tiny_config):
    masker = masker_for(tiny_config, len(tokens))
    short = tf.ragged.constant([list(range(10, 20)), list(range(10, 30))], dtype=tf.int64)
    features, labels, weights = masker(short, tf.constant([1, 2]))
    assert features["input_ids"].shape == (2, 22)   # padded to the batch's longest window only
    ids = features["input_ids"].numpy()
    assert ids[0, 0] == inputs.CLS_ID and ids[0, 11] == inputs.SEP_ID and ids[0, 12] == inputs.PAD_ID
    # ceil(15%) of 10 and of 20 tokens selected; slots padded to the batch's most selections only.
    assert weights.numpy().tolist() == [[1, 1, 0], [1, 1, 1]]
    assert features["masked_positions"].shape == labels.shape == (2, 3)
    assert features["masked_positions"].numpy()[0, 2] == 0 and labels.numpy()[0, 2] == 0


def test_literal_mask_token_is_kept_whole(tokens):
    tokenizer = vocab.make_tokenizer(tokens)
    ids = inputs.encode_with_masks(tokenizer, "i have watched this [MASK] and it was [mask]")
    assert ids[0] == inputs.CLS_ID and ids[-1] == inputs.SEP_ID
    assert ids.count(inputs.MASK_ID) == 2
    naive = inputs.tokenize_reviews(tokenizer, tf.constant(["this [MASK]"])).to_list()[0]
    assert inputs.MASK_ID not in naive       # what BertTokenizer alone would do


VALIDATION_MASKS = """
import sys, hashlib, tensorflow as tf
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/tests")
import config, conftest
from imdb_bert import inputs
settings = config.make_config("tiny")
windows = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[7 + (i * j) % 50 for j in range(40)] for i in range(64)], dtype=tf.int64)).map(tf.identity)
data = inputs.validation_dataset(windows, conftest.masker_for(settings, 60), settings.batch_size, settings.max_seq_len, settings.seed)
for _ in range(2):
    digest = hashlib.sha256()
    for features, labels, weights in data:
        digest.update(features["input_ids"].numpy().tobytes() + labels.numpy().tobytes())
    print(digest.hexdigest())
"""


@pytest.mark.slow
def test_validation_masking_is_the_same_every_epoch_and_run():
    script = VALIDATION_MASKS.format(root=ROOT)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    first_epoch, second_epoch = runs[0].split()
    assert first_epoch == second_epoch       # the same masks every epoch...
    assert runs[0] == runs[1]                # ...and in every run


def test_random_replacements_are_never_special_tokens(windows):
    """All selected tokens replaced at random, from a 12-token vocabulary of which 5 are special."""
    settings = config.make_config("tiny", {"max_seq_len": "128", "mask_token_rate": "0", "random_token_rate": "1"})
    masker = masker_for(settings, 12)
    replaced = []
    for draw in range(4):
        features, _, weights = masker(windows[:2000], tf.constant([7, draw]))
        rows = np.arange(len(weights))[:, None].repeat(weights.shape[1], axis=1)[weights.numpy() > 0]
        replaced.append(features["input_ids"].numpy()[rows, features["masked_positions"].numpy()[weights.numpy() > 0]])
    replaced = np.concatenate(replaced)
    assert len(replaced) > 10_000
    assert not np.isin(replaced, inputs.SPECIAL_IDS).any()
    assert set(np.unique(replaced)) == set(range(inputs.FIRST_TOKEN_ID, 12))   # every ordinary id drawn


def take_batches(data, count):
    return [(features["input_ids"].numpy(), features["masked_positions"].numpy(), labels.numpy())
            for features, labels, _ in data.take(count)]


@pytest.mark.slow
def test_the_training_stream_is_fixed_by_its_seed_and_resumes_where_it_stopped(windows, tokens):
    settings = config.make_config("tiny")
    masker = masker_for(settings, len(tokens))
    stream = tf.data.Dataset.from_tensor_slices(windows).map(tf.identity).cache()

    def batches(seed, start=0, count=6):
        return take_batches(inputs.training_dataset(stream, masker, 16, settings.max_seq_len, seed, start), count)

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again):   # a parallel map, yet the same batches and masks
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    resumed = batches(5, start=4, count=2)
    for a, b in zip(first[4:], resumed):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_whole_word_masking_selects_every_piece_of_a_word(tokens, windows):
    settings = config.make_config("tiny", {"max_seq_len": "128", "whole_word_masking": "true", "mask_rate": "0.3"})
    continuation = [token.startswith("##") for token in tokens]
    masker = masker_for(settings, len(tokens), with_original_ids=True, continuation=continuation)
    original, features, labels, weights = masker(windows[:500], tf.constant([3, 4]))
    original, positions, weights = original.numpy(), features["masked_positions"].numpy(), weights.numpy()
    is_piece = np.array(continuation)[original]
    words_with_pieces = 0
    for row in range(len(original)):
        chosen = set(positions[row][weights[row] > 0].tolist())
        for column in chosen:
            start = column
            while start > 1 and is_piece[row, start]:
                start -= 1
            end = column + 1
            while end < original.shape[1] and is_piece[row, end]:
                end += 1
            assert set(range(start, end)) <= chosen, (row, column)   # the whole word, not one piece of it
            words_with_pieces += end - start > 1
    assert words_with_pieces > 50
