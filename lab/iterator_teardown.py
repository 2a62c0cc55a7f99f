"""How long deleting a tf.data iterator takes after it has sat idle, with autotuning on and off.

    python3 lab/iterator_teardown.py [--idle 5 21] [--csv results/iterator_teardown.csv]

Keras keeps each validation pass's iterator until the next pass (and, in a `fit` without
`steps_per_epoch`, each epoch's training iterator until the next epoch), so the iterator sits idle
for about an epoch before it is deleted. This times that deletion for a small pipeline with an
AUTOTUNE map, a cache and an AUTOTUNE prefetch (as ours have), its cache filled by a first pass,
then read to its end again and left idle; prints one CSV row per case. `inputs.released_promptly` is the "autotuning off" case.
"""

import argparse
import csv
import os
import sys
import time

# The lab imports the product (config.py, imdb_bert/) from the repository root, never the reverse.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from imdb_bert import distribute, inputs  # noqa: E402


def pipeline(autotune: bool) -> tf.data.Dataset:
    dataset = (tf.data.Dataset.range(2_000).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(32).cache().prefetch(tf.data.AUTOTUNE))
    return dataset if autotune else inputs.released_promptly(dataset)


def delete_seconds(autotune: bool, idle: float) -> float:
    dataset = pipeline(autotune)
    for _ in dataset:   # the first pass fills the cache, as a run's first epoch does
        pass
    iterator = iter(dataset)
    for _ in iterator:
        pass
    time.sleep(idle)
    started = time.perf_counter()
    del iterator
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, nargs="+", default=[5.0, 21.0], help="seconds left idle")
    parser.add_argument("--csv", help="also append the rows to this CSV")
    arguments = parser.parse_args()
    rows = [{"autotune": autotune, "idle_seconds": idle, "delete_seconds": round(delete_seconds(autotune, idle), 2),
             "tensorflow": tf.__version__, "cpu": distribute.cpu_description()}
            for autotune in (True, False) for idle in arguments.idle]
    outputs = [sys.stdout] + ([open(arguments.csv, "a", newline="", encoding="utf-8")] if arguments.csv else [])
    for out in outputs:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        if out is sys.stdout or out.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
