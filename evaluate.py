"""How good is a run? Held-out numbers that compare across runs with other settings.

    python evaluate.py runs/cpu [runs/other ...]     each run's numbers; refreshes its report.md
    python evaluate.py --compare runs/*               one table of all runs side by side

Measures, on the validation reviews no run trained on: masked-token accuracy and perplexity under
one fixed protocol (15% masked, 80/10/10, fixed seed, every window), whatever masking the run
trained with; a word-level cloze (whole frequent words, vocabulary-independent) with top-1 and
top-5 hit rates; and the fine-tuned sentiment accuracy when the run has a classifier/.
The cloze sentences are built once from the prepared data and kept in <data_dir>/cloze/.
"""

import argparse
import json
import os
import time

import config as config_module
from imdb_bert import artifacts, pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run folders (runs/<name>)")
    parser.add_argument("--compare", action="store_true", help="print one table of all runs side by side")
    parser.add_argument("--json", action="store_true", help="also print each run's numbers as JSON")
    arguments = parser.parse_args()
    if arguments.compare:
        # `runs/*` as a shell expands it also names files and other folders (fit caches, study CSVs,
        # a run still in progress): those are skipped with a note, a damaged run folder is still refused.
        skipped = [path for path in arguments.runs if not os.path.isfile(os.path.join(path, artifacts.MANIFEST))]
        for path in skipped:
            print(f"evaluate: skipping {path}: not a finished run folder (no {artifacts.MANIFEST})")
        arguments.runs = [path for path in arguments.runs if path not in skipped]
        if not arguments.runs:
            raise artifacts.StageError(f"--compare found no finished run folder among the {len(skipped)} paths given; "
                                       f"train one first: {pipeline.COMMANDS['model_training']}")
    # every folder is refused in one line before any TensorFlow work
    manifests = {run_dir: pipeline.read_run(run_dir, config_module.Config) for run_dir in arguments.runs}

    from imdb_bert import evaluation, probe, report, resume

    references = report.read_references(config_module.REFERENCES_CSV)
    rows = []
    for run_dir in arguments.runs:
        started = time.time()
        row = evaluation.evaluate_run(run_dir, manifests[run_dir], config_module.PRESET_VOCAB_SIZES)
        report.write(run_dir, report.render(row["name"], row["preset"], row, row["settings"],
                                            probe.read_probe_history(os.path.join(run_dir, resume.PROBE_HISTORY)),
                                            os.path.isfile(os.path.join(run_dir, "curves.png")), references))
        print(f"evaluate: {run_dir}: masked-token accuracy {row['masked_accuracy']:.4f}, perplexity "
              f"{row['perplexity']:.1f} (fixed protocol, {row['masked_tokens']} held-out masked tokens); cloze top-1 "
              f"{row['cloze_top1']:.4f}, top-5 {row['cloze_top5']:.4f} ({row['cloze_sentences']} sentences)"
              + (f"; sentiment {row['sentiment_accuracy']:.4f}" if row.get("sentiment_accuracy") is not None else "")
              + f"; {time.time() - started:.0f}s -> {os.path.join(run_dir, 'report.md')}")
        if arguments.json:
            print(json.dumps({key: value for key, value in row.items() if key != "settings"}))
        rows.append(row)
    if arguments.compare:
        print(report.compare_table(rows))


if __name__ == "__main__":
    pipeline.run_stage(main)
