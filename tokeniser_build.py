"""Stage 3: learn a WordPiece vocabulary from the training split only.

    python tokeniser_build.py [--preset P] [--set vocab_size=8000] [--force]

Reads <data_dir>/prepared (written by data_prep.py) and writes <data_dir>/vocab/vocab.txt with a
manifest.json; prints the vocabulary size, the time taken and the [UNK] rate on validation.
Does nothing if that vocabulary was already learned from the same prepared data and config.
"""

import os
import time

import config as config_module
from imdb_bert import artifacts, corpus, pipeline, vocab


def main():
    config, options = config_module.load_stage_config(__doc__)
    prepared = artifacts.prepared_dir(config.data_dir)
    prepared_manifest = pipeline.current_prepared(config)
    identity = pipeline.stage_identity(config, pipeline.stage_keys(config, "vocab"), {"prepared": prepared_manifest["fingerprint"]})
    output = artifacts.vocab_dir(config.data_dir)
    if pipeline.skip_if_up_to_date("tokeniser_build", output, identity, options.force, config):
        return

    train_texts = corpus.split_texts(prepared, "train")
    validation_texts = corpus.split_texts(prepared, "validation")
    started = time.time()
    tokens, stats = vocab.learn_vocabulary(train_texts, config.vocab_size, config.vocab_min_word_count)
    seconds = time.time() - started
    unknown = vocab.unknown_rate(vocab.make_tokenizer(tokens), validation_texts)

    with artifacts.atomic_dir(output) as folder:
        vocab.write_vocabulary(os.path.join(folder, "vocab.txt"), tokens)
        artifacts.write_manifest(
            folder, "tokeniser_build", identity, vocab_size=len(tokens), reserved_tokens=vocab.RESERVED_TOKENS,
            total_seconds=round(seconds, 1), validation_unknown_rate=round(unknown, 6), **stats)

    print(f"tokeniser_build: vocab size {len(tokens)} (target {config.vocab_size}) learned from "
          f"{len(train_texts)} training reviews in {seconds:.1f}s "
          f"(counting {stats['count_seconds']}s, learning {stats['learn_seconds']}s, "
          f"{stats['words_learned_from']} of {stats['distinct_words']} distinct words)")
    print(f"tokeniser_build: [UNK] rate on validation {unknown:.4%} -> {artifacts.vocab_path(config.data_dir)}")


if __name__ == "__main__":
    pipeline.run_stage(main)
