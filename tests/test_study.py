"""study.py on the tiny recipe: a variant with two seeds, each trained for the same few seconds of
steps and scored on the dev split; one CSV row per run, written as each run ends."""

import csv
import json
import os
import re

from conftest import one_line_error, run_stage
from imdb_bert import pipeline
import config


def test_study_runs_variants_scores_them_on_dev_and_keeps_no_run_folder(built_data, tmp_path):
    data_dir, _ = built_data
    results, runs = str(tmp_path / "study.csv"), str(tmp_path / "runs")
    # seq64to128 trains on 128-token windows (tiny has 64) after 90% of its time on 64-token ones,
    # and is scored on 64-token dev windows, as a run of tiny's own length would be.
    result = run_stage(["lab/study.py", "--preset", "tiny", "--minutes", "0.15", "--seeds", "1", "2", "--probe-labels", "60",
                        "--score-seq-len", "64", "--results", results, "seq64to128"],
                       data_dir, f"runs_dir={runs}", "steps_per_epoch=100000")   # no epoch end in the few seconds
    with open(results, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["variant"], row["seed"]) for row in rows] == [("seq64to128", "1"), ("seq64to128", "2")]
    for row in rows:
        assert row["recipe"].startswith("tiny ") and int(row["steps"]) > 0 and row["dev_seq_len"] == "64"
        assert 0.0 <= float(row["dev_masked_accuracy"]) <= 1.0 and float(row["dev_perplexity"]) > 1.0
        assert 0.0 <= float(row["frozen_probe_dev"]) <= 1.0 and row["frozen_probe_layer"]
        # The variant's settings are recorded with its rows.
        assert row["settings"] == "max_seq_len=128 short_seq_len=64 short_seq_share=0.9"
    # Different seeds train differently. One rounded figure can tie when a loaded machine buys only a
    # few steps (both perplexities were 315.5 once), so the test asks that the scored figures differ.
    scored = ["dev_masked_accuracy", "dev_perplexity", "probe_p", "frozen_probe_dev"]
    assert [rows[0][key] for key in scored] != [rows[1][key] for key in scored]
    assert "| tiny" in result.stdout and "| seq64to128 |" in result.stdout
    assert not os.listdir(os.path.join(runs, "study"))
    # Each two-length run switches once, mid-run, from 64- to 128-token windows.
    switches = re.findall(r"(\d+)-token windows from optimizer step (\d+)", result.stdout)
    assert [length for length, _ in switches] == ["64", "128"] * 2, result.stdout[-3000:]
    for (_, first), (_, second), row in zip(switches[::2], switches[1::2], rows):
        assert first == "0" and 0 < int(second) < int(row["steps"])


def test_study_refuses_an_unknown_variant_in_one_line(built_data, tmp_path):
    data_dir, _ = built_data
    one_line_error(run_stage(["lab/study.py", "--results", str(tmp_path / "s.csv"), "no_such"], data_dir, check=False),
                   "unknown variant 'no_such'", "study.py --list")


def test_study_keep_finishes_the_run_for_evaluate(built_data, tmp_path):
    data_dir, _ = built_data
    results, runs = str(tmp_path / "study.csv"), str(tmp_path / "runs")
    result = run_stage(["lab/study.py", "--preset", "tiny", "--minutes", "0.02", "--probe-labels", "60", "--results", results, "--keep",
                        "baseline"], data_dir, f"runs_dir={runs}")
    assert "token windows from" not in result.stdout   # one window length: no switch
    run_dir = os.path.join(runs, "study", "baseline-s1")
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    # Held-out figures beside the dev row: the run is finished as model_training.py finishes one.
    assert 0.0 <= metrics["validation_masked_accuracy"] <= 1.0 and metrics["validation_windows"] > 0
    pipeline.read_run(run_dir, config.Config)   # what evaluate.py asks of a finished run folder


def test_no_variant_builds_the_recipe_it_is_compared_with():
    from lab import study

    recipe = config.make_config("cpu", {}).as_dict()
    for name, overrides in study.VARIANTS.items():
        if name != "baseline":
            assert config.make_config("cpu", overrides).as_dict() != recipe, name
