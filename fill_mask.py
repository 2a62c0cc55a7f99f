"""Fill the [MASK]s of sentences with a trained run's model, with softmax probabilities.

    python fill_mask.py "i have watched this [MASK] and it was awesome" --top-k 5
    python fill_mask.py --file sentences.txt --json        (one sentence per line; - reads stdin)

The run folder is the one model_training.py wrote for the config (<runs_dir>/<run_name or preset>),
or --run FOLDER.
"""

import argparse
import json
import sys

import config as config_module
from imdb_bert import artifacts, pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="sentences containing [MASK]")
    parser.add_argument("--file", help="read sentences from this file, one per line (- for stdin)")
    parser.add_argument("--top-k", type=int, default=None, help="fills per mask (default: config top_k)")
    parser.add_argument("--json", action="store_true", help="print one JSON array of fill dicts")
    parser.add_argument("--run", help="run folder (default: the config's run folder)")
    config_module.add_config_arguments(parser)
    args = parser.parse_args()
    if args.top_k is not None and args.top_k <= 0:
        raise artifacts.StageError(f"--top-k must be a positive number of fills, got {args.top_k}")
    sentences = artifacts.texts_from_command_line(args.sentences, args.file, "sentence")
    run_dir = args.run or config_module.config_from_args(args).run_dir
    pipeline.read_run(run_dir, config_module.Config, " (or pass --run FOLDER)")   # a missing, old or damaged folder is refused before TensorFlow is imported
    from imdb_bert import probe

    model, tokenizer, tokens, run_config = probe.load_run(run_dir)
    top_k = run_config["top_k"] if args.top_k is None else args.top_k
    fills, failures = [], []
    for sentence in sentences:
        try:
            fills.extend(probe.top_k_fills(model, tokenizer, tokens, sentence, top_k, run_config["max_seq_len"]))
        except artifacts.StageError as error:
            if len(sentences) == 1:
                raise
            failures.append(str(error))
    if args.json:
        print(json.dumps(fills, indent=2))
    else:
        for fill in fills:
            print(fill)
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        sys.exit(2)


if __name__ == "__main__":
    pipeline.run_stage(main)
