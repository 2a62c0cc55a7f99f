"""Serve an exported raw-string model: sentiment of reviews, or fills of [MASK]s.

    python predict.py "a wonderful, moving film" "two hours i will never get back"
    python predict.py --export runs/cpu/fill_mask_export "i have watched this [MASK] and it was awesome"
    python predict.py --file reviews.txt --json          (one text per line; - reads stdin)

--export defaults to the config's run folder: <run_dir>/classifier/sentiment_export (written by
classifier_training.py). <run_dir>/fill_mask_export is written by model_training.py. The export
alone is loaded (TensorFlow + tensorflow-text): no vocab file, no model code.
"""

import argparse
import json
import os
import re

import config as config_module
from imdb_bert import artifacts, pipeline

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", help="reviews to classify, or sentences containing [MASK]")
    parser.add_argument("--file", help="read texts from this file, one per line (- for stdin)")
    parser.add_argument("--export", help="exported model folder (default: the config run's sentiment export)")
    parser.add_argument("--json", action="store_true", help="print one JSON array")
    config_module.add_config_arguments(parser)
    args = parser.parse_args()
    texts = artifacts.texts_from_command_line(args.texts, args.file, "text")
    folder = args.export or os.path.join(artifacts.classifier_dir(config_module.config_from_args(args).run_dir),
                                        artifacts.SENTIMENT_EXPORT)
    try:
        with open(os.path.join(folder, "export.json"), encoding="utf-8") as handle:
            info = json.load(handle)
        signature = info["signature"]
    except (OSError, ValueError, KeyError):
        raise artifacts.StageError(f"{folder} is not a finished export (export.json missing or unreadable): run "
                                   f"{pipeline.COMMANDS['classifier_training']} (sentiment) or "
                                   f"{pipeline.COMMANDS['model_training']} (fill_mask_export), or pass --export FOLDER") from None
    artifacts.check_files(folder, info, pipeline.rerun("model_training" if signature == "fill_mask" else "classifier_training"))

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops the export uses)

    serve = tf.saved_model.load(folder).signatures[signature]
    try:
        outputs = {name: value.numpy() for name, value in serve(tf.constant(texts)).items()}
    except tf.errors.InvalidArgumentError as error:
        # The export's own checks say what is wrong inside "assertion failed: [...]".
        reason = re.search(r"assertion failed: \[([^\]]*)\]", error.message)
        raise artifacts.StageError(reason.group(1) if reason else error.message.strip().splitlines()[-1]) from None
    if signature == "fill_mask":
        from imdb_bert.probe import fills_from_outputs

        results = fills_from_outputs(texts, outputs)
    else:
        results = [{"text": text, "label": label.decode("utf-8"), "probability_positive": round(float(p), 6)}
                   for text, label, p in zip(texts, outputs["label"], outputs["probability_positive"])]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result)


if __name__ == "__main__":
    pipeline.run_stage(main)
