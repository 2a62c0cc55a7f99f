"""Stage 2: clean the raw reviews, drop empty ones and duplicates, split, write TFRecord shards.

    python data_prep.py [--preset P] [--source official|package|tfds] [--set validation_fraction=0.1] [--force]

Three splits: train (pretraining, vocabulary, fine-tuning), dev (choices: per-epoch validation,
the fine-tuning epoch, recipe studies) and validation (held out, scored only for final figures).

Reads <data_dir>/raw (written by ./download.sh) or the TFDS cache (source=tfds), and writes
<data_dir>/prepared/{train,dev,validation}-*.tfrecord with a manifest.json of counts and config.
Does nothing if that output was already built from the same raw reviews and config.
"""

import time

import config as config_module
from imdb_bert import artifacts, corpus, pipeline


def main():
    config, options = config_module.load_stage_config(__doc__, shorthands=("source",))
    source, raw_folder, raw_manifest = pipeline.find_raw(config.source, config.data_dir)
    identity = pipeline.stage_identity(config, pipeline.stage_keys(config, "data_prep"),
                                       pipeline.current_raw_inputs(source, config.data_dir))
    output = artifacts.prepared_dir(config.data_dir)
    if pipeline.skip_if_up_to_date("data_prep", output, identity, options.force, config):
        return
    started = time.time()

    reviews, undecodable = corpus.read_raw(source, raw_folder)
    kept, counts = corpus.clean_and_dedupe(reviews)
    splits = corpus.split_reviews(kept, config.validation_fraction, config.dev_fraction, config.split_seed)

    with artifacts.atomic_dir(output) as folder:
        shards = {name: corpus.write_shards(folder, name, splits[name], config.num_shards)
                  for name in corpus.SPLITS}
        split_summary = {
            name: {"reviews": len(items),
                   "labels": {corpus.LABEL_NAMES[label]: sum(r.label == label for r in items)
                              for label in corpus.LABEL_NAMES}}
            for name, items in splits.items()}
        artifacts.write_manifest(
            folder, "data_prep", identity, source=source, origin=raw_manifest.get("origin"),
            undecodable_reviews=undecodable, **counts, splits=split_summary, shards=shards)

    print(f"data_prep: source={source} read={counts['read']} empty_dropped={counts['empty_dropped']} "
          f"duplicates_removed={counts['duplicates_removed']} undecodable={undecodable}")
    print(f"data_prep: train={len(splits['train'])} dev={len(splits['dev'])} validation={len(splits['validation'])} "
          f"reviews -> {output} ({time.time() - started:.1f}s)")


if __name__ == "__main__":
    pipeline.run_stage(main)
