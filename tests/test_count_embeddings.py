import os

import numpy as np
import pytest
import tensorflow as tf

import config as config_module
from imdb_bert import artifacts, count_embeddings, inputs, pipeline, pretraining, vocab


def windows_of(rows):
    return tf.data.Dataset.from_tensor_slices(tf.ragged.constant(rows, dtype=tf.int64)).map(lambda row: row)


def test_cooccurrence_weights_pieces_by_distance_within_a_window_only():
    counts = count_embeddings.cooccurrence(windows_of([[5, 6, 7], [8, 9]]), vocab_size=10, radius=2).toarray()
    assert counts[5, 6] == counts[6, 5] == 1.0 and counts[6, 7] == 1.0 and counts[8, 9] == 1.0
    assert counts[5, 7] == counts[7, 5] == 0.5
    assert counts[7, 8] == 0.0   # the end of one window is not next to the start of the next
    assert counts.sum() == 2 * (1 + 1 + 0.5 + 1)


@pytest.fixture(scope="module")
def review_windows(built_data, tiny_config):
    tokens = vocab.read_vocabulary(artifacts.vocab_path(built_data[0]))
    return tokens, inputs.window_dataset(artifacts.prepared_dir(built_data[0]), "train", vocab.make_tokenizer(tokens),
                                         tiny_config.max_seq_len)


def test_ppmi_svd_vectors_of_real_reviews_follow_their_ppmi_and_keep_unseen_rows(review_windows):
    tokens, windows = review_windows
    random_table = np.random.default_rng(0).normal(0.0, 0.02, (len(tokens), 32)).astype(np.float32)
    settings = count_embeddings.CountEmbeddingConfig()
    table, counted = count_embeddings.ppmi_svd_table(windows, random_table, settings, seed=0)
    matrix = count_embeddings.ppmi(count_embeddings.cooccurrence(windows, len(tokens), settings.radius),
                                   settings.context_power).toarray()
    seen = matrix.sum(axis=1) > 0
    np.testing.assert_array_equal(counted, seen)
    assert 0.5 * len(tokens) < seen.sum() < len(tokens)
    # Pieces no window holds ([PAD], [MASK], [CLS], [SEP]) keep their random rows.
    assert not seen[[tokens.index(name) for name in ("[PAD]", "[MASK]", "[CLS]", "[SEP]")]].any()
    np.testing.assert_array_equal(table[~seen], random_table[~seen])
    norms = np.linalg.norm(table[seen], axis=1)
    assert norms.mean() == pytest.approx(np.linalg.norm(random_table[seen], axis=1).mean(), rel=1e-4)
    # The vectors factorise the PPMI: their dot products follow it, where the random table's do not.
    pairs = np.triu_indices(seen.sum(), 1)
    target = matrix[np.ix_(seen, seen)][pairs]
    for vectors, least, most in ((table, 0.2, 1.0), (random_table, -0.05, 0.05)):
        correlation = np.corrcoef((vectors[seen] @ vectors[seen].T)[pairs], target)[0, 1]
        assert least < correlation < most


def test_a_run_with_embedding_init_ppmi_svd_starts_from_the_counted_table(tmp_path, built_data, capsys):
    data_dir = str(tmp_path / "data")
    os.symlink(built_data[0], data_dir)
    settings = config_module.make_config("tiny", {"data_dir": data_dir, "runs_dir": str(tmp_path / "runs"),
                                                  "embedding_init": "ppmi_svd"})
    run = pretraining.start(settings, pipeline.training_identity(settings), force=False)
    pretraining.build(run)
    table = run.model.encoder.token_embedding.embeddings.numpy()
    assert "token table from co-occurrence counts" in capsys.readouterr().out
    expected, counted = count_embeddings.ppmi_svd_table(run.train_windows, np.ones_like(table),
                                                        count_embeddings.CountEmbeddingConfig(), settings.seed)
    assert counted.any() and not counted.all()
    # The same vectors up to the scale that matches the random rows' norm.
    scale = np.linalg.norm(table[counted], axis=1) / np.linalg.norm(expected[counted], axis=1)
    np.testing.assert_allclose(scale, scale[0], rtol=1e-4)
    np.testing.assert_allclose(table[counted], expected[counted] * scale[0], rtol=1e-3, atol=1e-6)
