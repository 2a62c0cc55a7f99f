"""Copy a run's measured label curve into results/, where lab/render.py draws the tables from.

    python3 lab/record_curve.py runs/cpu-30min-bf16 --as cpu-30min-bf16 [--pretrain-minutes 30 --machine epyc-bf16]
                                 [--results results]

Appends each row of <run>/label_curve/label_curve.csv to results/label_curve.csv under the name --as,
with the CPU (from lscpu) and today's date. With --pretrain-minutes, the rows at 100, 300, 1,000 and
all labels also go to results/pretraining_curve.csv (the pretraining-compute curve), with the
encoder's optimizer steps and held-out masked-token accuracy from the run's metrics.json and
--machine naming the kind of CPU (the curves of different machines are kept apart).
"""

import argparse
import csv
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from imdb_bert import artifacts, distribute  # noqa: E402

CURVE_KEYS = ["labels", "train_reviews", "seed", "model", "scored_on", "accuracy", "dev_accuracy", "epoch_picked",
              "epochs", "passes_per_epoch", "windows", "review_passes", "seconds"]
COMPUTE_CURVE_LABELS = ("100", "300", "1000", "all")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--as", dest="name", required=True, help="the run's name in results/ (e.g. cpu-30min-bf16)")
    parser.add_argument("--pretrain-minutes", default="", help="also record the compute curve's rows, at these minutes")
    parser.add_argument("--machine", default="", help="the kind of CPU in results/pretraining_curve.csv (epyc-bf16)")
    parser.add_argument("--results", default=os.path.join(ROOT, "results"), help="the folder of the CSVs")
    arguments = parser.parse_args()
    if arguments.pretrain_minutes and not arguments.machine:
        parser.error("--pretrain-minutes needs --machine")
    with open(os.path.join(arguments.run_dir, "label_curve", "label_curve.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(os.path.join(arguments.run_dir, "label_curve", "manifest.json"), encoding="utf-8") as handle:
        learning_rate = json.load(handle)["config"]["classifier_learning_rate"]
    with open(os.path.join(arguments.run_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    cpu, date = distribute.cpu_description(), time.strftime("%Y-%m-%d")
    for row in rows:
        artifacts.append_row(os.path.join(arguments.results, "label_curve.csv"),
                             {"run": arguments.name, **{key: row[key] for key in CURVE_KEYS}, "cpu": cpu, "date": date})
        if arguments.pretrain_minutes and row["labels"] in COMPUTE_CURVE_LABELS:
            pretrained = row["model"] == "pretrained"
            artifacts.append_row(os.path.join(arguments.results, "pretraining_curve.csv"), {
                "pretrain_minutes": arguments.pretrain_minutes if pretrained else "0",
                "optimizer_steps": metrics["optimizer_steps"] if pretrained else 0,
                "masked_accuracy": f"{metrics['validation_masked_accuracy']:.4f}" if pretrained else "",
                "classifier_learning_rate": learning_rate,
                **{key: row[key] for key in CURVE_KEYS}, "machine": arguments.machine})
    print(f"{len(rows)} rows of {arguments.run_dir} recorded as {arguments.name} ({cpu})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
