"""study.py on the tiny recipe: a variant trained for a few seconds of steps and scored on the dev
split; one CSV row per run, written as each run ends."""

import csv
import json
import os
import re

from conftest import one_line_error, run_stage
from imdb_bert import pipeline
import config


def test_study_runs_a_variant_scores_it_on_dev_and_keep_finishes_the_run(built_data, tmp_path):
    data_dir, _ = built_data
    results, runs = str(tmp_path / "study.csv"), str(tmp_path / "runs")
    # seq64to128 trains on 128-token windows (tiny has 64) after 90% of its time on 64-token ones,
    # and is scored on 64-token dev windows, as a run of tiny's own length would be.
    result = run_stage(["lab/study.py", "--preset", "tiny", "--minutes", "0.15", "--seeds", "3", "--probe-labels", "60",
                        "--score-seq-len", "64", "--results", results, "--keep", "seq64to128"],
                       data_dir, f"runs_dir={runs}", "steps_per_epoch=100000")   # no epoch end in the few seconds
    with open(results, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["variant"], row["seed"]) for row in rows] == [("seq64to128", "3")]
    row = rows[0]
    assert row["recipe"].startswith("tiny ") and int(row["steps"]) > 0 and row["dev_seq_len"] == "64"
    assert float(row["dev_perplexity"]) > 1.0 and row["frozen_probe_layer"]
    # The variant's settings are recorded with its row.
    assert row["settings"] == "max_seq_len=128 short_seq_len=64 short_seq_share=0.9"
    assert "| tiny" in result.stdout and "| seq64to128 |" in result.stdout
    # The run switches once, mid-run, from 64- to 128-token windows.
    switches = re.findall(r"(\d+)-token windows from optimizer step (\d+)", result.stdout)
    assert [length for length, _ in switches] == ["64", "128"], result.stdout[-3000:]
    assert switches[0][1] == "0" and 0 < int(switches[1][1]) < int(row["steps"])
    # --keep: the run is finished as model_training.py finishes one, held-out figures beside the dev row.
    assert os.listdir(os.path.join(runs, "study")) == ["seq64to128-s3"]
    run_dir = os.path.join(runs, "study", "seq64to128-s3")
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["validation_windows"] > 0 and metrics["optimizer_steps"] == int(row["steps"])
    pipeline.read_run(run_dir, config.Config)   # what evaluate.py asks of a finished run folder


def test_study_refuses_an_unknown_variant_in_one_line(built_data, tmp_path):
    data_dir, _ = built_data
    one_line_error(run_stage(["lab/study.py", "--results", str(tmp_path / "s.csv"), "no_such"], data_dir, check=False),
                   "unknown variant 'no_such'", "study.py --list")


def test_no_variant_builds_the_recipe_it_is_compared_with():
    from lab import study

    recipe = config.make_config("cpu", {}).as_dict()
    for name, overrides in study.VARIANTS.items():
        if name != "baseline":
            assert config.make_config("cpu", overrides).as_dict() != recipe, name
