"""Stage 2: clean the raw reviews, drop empty ones and duplicates, split, write TFRecord shards.

    python data_prep.py [--preset P] [--source official|package|tfds] [--set validation_fraction=0.1]

Reads <data_dir>/raw (written by ./download.sh) or the TFDS cache (source=tfds), and writes
<data_dir>/prepared/{train,validation}-*.tfrecord with a manifest.json of counts and config.
"""

import os
import time

import config as config_module
from imdb_bert import artifacts, corpus


def read_raw(config):
    """The raw reviews of the configured source, and a record of where they came from."""
    raw = artifacts.raw_dir(config.data_dir)
    source = config.source
    if source == "auto":
        present = [name for name in ("official", "package")
                   if os.path.isfile(os.path.join(raw, name, artifacts.MANIFEST))]
        if not present:
            raise artifacts.StageError(f"no raw reviews in {raw}: run ./download.sh first")
        source = present[0]
    if source == "tfds":
        reviews, undecodable = corpus.read_tfds()
        return reviews, undecodable, {"source": "tfds", "origin": "tensorflow-datasets imdb_reviews"}
    folder = os.path.join(raw, source)
    raw_manifest = artifacts.read_manifest(folder, f"run ./download.sh --source {source}")
    if source == "official":
        reviews, undecodable = corpus.read_official(os.path.join(folder, "aclImdb"))
    else:
        reviews, undecodable = corpus.read_package_csv(os.path.join(folder, corpus.PACKAGE_CSV))
    return reviews, undecodable, {"source": source, "origin": raw_manifest.get("origin"),
                                  "raw_sha256": raw_manifest.get("sha256")}


def main():
    config = config_module.load_stage_config(__doc__, shorthands=("source",))
    started = time.time()

    reviews, undecodable, origin = read_raw(config)
    kept, counts = corpus.clean_and_dedupe(reviews)
    splits = corpus.split_reviews(kept, config.validation_fraction, config.split_seed)

    output = artifacts.prepared_dir(config.data_dir)
    with artifacts.atomic_dir(output) as folder:
        shards = {name: corpus.write_shards(folder, name, splits[name], config.num_shards)
                  for name in corpus.SPLITS}
        split_summary = {
            name: {"reviews": len(items),
                   "labels": {corpus.LABEL_NAMES[label]: sum(r.label == label for r in items)
                              for label in corpus.LABEL_NAMES},
                   "fingerprint": corpus.text_fingerprint(items)}
            for name, items in splits.items()}
        manifest = artifacts.write_manifest(
            folder, "data_prep", **origin, undecodable_reviews=undecodable, **counts,
            splits=split_summary, shards=shards,
            config={key: getattr(config, key) for key in ("source", "validation_fraction", "split_seed",
                                                          "num_shards")})

    print(f"data_prep: source={manifest['source']} read={counts['read']} empty_dropped={counts['empty_dropped']} "
          f"duplicates_removed={counts['duplicates_removed']} undecodable={undecodable}")
    print(f"data_prep: train={len(splits['train'])} validation={len(splits['validation'])} "
          f"reviews -> {output} ({time.time() - started:.1f}s)")


if __name__ == "__main__":
    artifacts.run_stage(main)
