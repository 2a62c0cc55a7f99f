"""A start for the token embedding table from co-occurrence counts over the training windows.

Counting which word pieces appear near which, and factorising the positive PMI of those counts, takes
seconds and gives each piece a vector whose neighbours are pieces used alike (Levy, Goldberg & Dagan
2015, "Improving distributional similarity with lessons learned from word embeddings": PPMI with the
context counts raised to 0.75, truncated SVD, eigenvalues weighted by their square root). The masked
LM then starts from that table instead of a random one (`embedding_init=ppmi_svd`); the blocks and
the position table start random as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import tensorflow as tf
from sklearn.utils.extmath import randomized_svd

COUNT_BATCH = 8192   # windows read from the dataset at a time


@dataclass(frozen=True)
class CountEmbeddingConfig:
    radius: int = 5            # pieces up to this far apart (within one window) count as co-occurring,
                               # weighted 1/distance, as GloVe weights its counts
    context_power: float = 0.75   # context counts raised to this (smooths PMI's bias to rare contexts)
    svd_iterations: int = 4


def cooccurrence(windows: tf.data.Dataset, vocab_size: int, radius: int):
    """The symmetric [vocab, vocab] scipy CSR matrix of distance-weighted co-occurrence counts of
    word pieces within `radius` of each other in the same window (1-D id tensors)."""
    counts = scipy.sparse.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    for batch in windows.ragged_batch(COUNT_BATCH):
        ids = batch.flat_values.numpy().astype(np.int64)
        window_of = np.repeat(np.arange(batch.nrows().numpy()), batch.row_lengths().numpy())
        left, right, weight = [], [], []
        for distance in range(1, radius + 1):
            same = window_of[distance:] == window_of[:-distance]
            left.append(ids[:-distance][same])
            right.append(ids[distance:][same])
            weight.append(np.full(left[-1].shape, 1.0 / distance))
        left, right, weight = np.concatenate(left), np.concatenate(right), np.concatenate(weight)
        pairs = scipy.sparse.coo_matrix((np.concatenate([weight, weight]),
                                         (np.concatenate([left, right]), np.concatenate([right, left]))),
                                        shape=(vocab_size, vocab_size))
        counts = counts + pairs.tocsr()   # tocsr sums the repeated pairs
    return counts


def ppmi(counts, context_power: float):
    """Positive pointwise mutual information of a CSR count matrix, with smoothed context counts."""
    counts = counts.tocoo()
    row_totals = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** context_power
    pmi = np.log(counts.data * context.sum() / (row_totals[counts.row] * context[counts.col]))
    keep = pmi > 0
    return scipy.sparse.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)


def ppmi_svd_table(windows: tf.data.Dataset, current: np.ndarray, settings: CountEmbeddingConfig,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a new embedding table, a boolean mask of the rows counted): `current` (the random table, [vocab,
    hidden]) with every word piece seen in `windows` replaced by its PPMI-SVD vector, scaled so those
    rows have the mean norm of the random rows they replace. A piece with no positive PMI (the reserved
    tokens, which no window holds) keeps its random row."""
    vocab_size, hidden = current.shape
    matrix = ppmi(cooccurrence(windows, vocab_size, settings.radius), settings.context_power)
    left, singular, _ = randomized_svd(matrix, hidden, n_iter=settings.svd_iterations, random_state=seed)
    vectors = left * np.sqrt(singular)
    seen = np.asarray(matrix.sum(axis=1)).ravel() > 0
    norms = np.linalg.norm(vectors[seen], axis=1)
    scale = np.linalg.norm(current[seen], axis=1).mean() / max(norms.mean(), 1e-12)
    table = np.array(current, copy=True)
    table[seen] = vectors[seen] * scale
    return table.astype(current.dtype), seen
