"""End to end: the four stage scripts and fill_mask.py, run as a user would on the tiny preset,
on a small archive of real IMDB reviews served through download.sh's official path."""

import csv
import json
import os

import pytest

from conftest import run_stage, stage_environment

PROBE = "i have watched this [MASK] and it was awesome"


@pytest.fixture(scope="module")
def pipeline(trained_run):
    return trained_run


def test_stage_outputs_and_manifests(pipeline):
    data_dir, outputs = pipeline
    prepared = json.load(open(os.path.join(data_dir, "prepared", "manifest.json")))
    assert prepared["source"] == "official" and prepared["read"] == 400
    assert sum(prepared["splits"][name]["reviews"] for name in ("train", "dev", "validation")) == prepared["kept"]
    assert prepared["splits"]["dev"]["reviews"] > 0 and prepared["shards"]["dev"]
    vocab_manifest = json.load(open(os.path.join(data_dir, "vocab", "manifest.json")))
    assert vocab_manifest["vocab_size"] == 1000
    assert "[UNK] rate on validation" in outputs["tokeniser_build.py"].stdout
    run_dir = os.path.join(data_dir, "runs", "tiny")
    for name in ["model.keras", "best.keras", "vocab.txt", "config.json", "history.csv", "metrics.json",
                 "manifest.json", "fill_mask_export/export.json", "fill_mask_export/saved_model.pb"]:
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert os.listdir(os.path.join(data_dir, "runs")) == ["tiny"]   # no partial or in-progress folder left
    for output in outputs.values():
        assert "Traceback" not in output.stderr


def test_validation_loss_falls_and_metrics_are_masked_only(pipeline):
    data_dir, outputs = pipeline
    with open(os.path.join(data_dir, "runs", "tiny", "history.csv")) as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 3
    assert float(history[-1]["dev_loss"]) < float(history[0]["dev_loss"])
    metrics = json.load(open(os.path.join(data_dir, "runs", "tiny", "metrics.json")))
    assert 0.0 < metrics["validation_masked_accuracy"] < 1.0 and metrics["validation_perplexity"] > 1.0
    printed = outputs["model_training.py"].stdout
    assert "validation masked-token accuracy" in printed and "all-positions token accuracy" in printed


def test_probe_prints_the_original_dicts_each_epoch(pipeline):
    _, outputs = pipeline
    lines = [line for line in outputs["model_training.py"].stdout.splitlines() if line.startswith("{'input_text'")]
    assert len(lines) == 3 * 5
    assert "'predicted mask token'" in lines[0] and "'probability'" in lines[0]


@pytest.mark.slow
def test_fill_mask_matches_the_last_probe(pipeline):
    data_dir, _ = pipeline
    metrics = json.load(open(os.path.join(data_dir, "runs", "tiny", "metrics.json")))
    result = run_stage(["fill_mask.py", PROBE, "--top-k", "3", "--json"], data_dir)
    fills = json.loads(result.stdout)
    assert len(fills) == 3
    assert fills[0]["predicted mask token"] == metrics["probe"][0]["predicted mask token"]
    assert fills[0]["probability"] == pytest.approx(metrics["probe"][0]["probability"], abs=1e-4)


@pytest.mark.slow
def test_fill_mask_reads_stdin_and_reports_lines_without_mask(pipeline):
    data_dir, _ = pipeline
    result = run_stage(["fill_mask.py", "--file", "-", "--top-k", "2"], data_dir, check=False,
                       stdin="the [MASK] was [MASK]\nno mask at all\n")
    assert result.returncode == 2
    assert result.stdout.count("'mask_index'") == 4
    assert "no [MASK] in 'no mask at all'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_tfds_source_without_a_prepared_cache_is_one_line(tmp_path):
    result = run_stage(["data_prep.py", "--source", "tfds"], str(tmp_path), "split_seed=1", check=False,
                       environment=stage_environment(TFDS_DATA_DIR=str(tmp_path / "no-tfds")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tensorflow-datasets has no prepared imdb_reviews" in result.stderr.strip().splitlines()[-1]
