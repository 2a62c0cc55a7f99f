"""label_curve.py and frozen_probe.py on the tiny trained run: the curve's samples, files and report
section, and the frozen probe's rows; the sampling rules as plain functions."""

import csv
import os

import numpy as np
import pytest

from conftest import copy_data, one_line_error, run_stage


def test_samples_are_class_balanced_and_nested():
    from lab import label_efficiency

    labels = np.array([0] * 700 + [1] * 300)
    np.random.default_rng(0).shuffle(labels)
    for seed in (1, 2):
        previous = set()
        for count in (10, 101, 300, 600):
            sample = label_efficiency.balanced_sample(labels, count, seed)
            assert len(sample) == count == len(set(sample))
            assert abs(int(labels[sample].sum()) * 2 - count) <= 1          # half of each label
            assert previous <= set(sample)                                   # smaller samples are part of larger ones
            previous = set(sample)
    assert set(label_efficiency.balanced_sample(labels, 100, 1)) != set(label_efficiency.balanced_sample(labels, 100, 2))
    with pytest.raises(ValueError, match="label 1"):
        label_efficiency.balanced_sample(labels, 700, 1)   # 350 positives wanted, 300 there
    assert list(label_efficiency.balanced_sample(labels, "all", 1)) == list(range(1000))


def test_small_samples_get_more_passes_and_counts_parse():
    from lab import label_efficiency

    schedules = {count: label_efficiency.schedule_for(count, min_epochs=1) for count in (100, 300, 1000, 3000, 20000)}
    passes = {count: s.repeats * s.epochs for count, s in schedules.items()}
    assert passes[100] > passes[300] > passes[1000] > passes[3000] >= passes[20000] == 1
    assert all(s.repeats * count >= 750 for count, s in schedules.items())
    assert label_efficiency.schedule_for(20000, min_epochs=2).epochs == 2
    shorter = label_efficiency.schedule_for(300, min_epochs=1, review_passes=2000)   # --passes: reviews read in all
    assert passes[300] * 300 >= 6000 > 2 * shorter.repeats * shorter.epochs * 300 >= 4000
    assert label_efficiency.parse_counts("300, all,100") == [100, 300, "all"]
    with pytest.raises(ValueError, match="got 'ten'"):
        label_efficiency.parse_counts("100,ten")


# The tiny preset reads 2 windows of a review; 3 here shows the curve reads as many as the classifier.
# Few reviews read and 2 epochs at least (tiny's classifier_epochs is 8): the files are under test, not the accuracy.
CURVE_COMMAND = ["lab/label_curve.py", "--labels", "40,all", "--seeds", "1", "--first-seed", "7", "--passes", "100",
                 "--set", "classifier_max_windows=3", "--set", "classifier_epochs=2"]


@pytest.fixture(scope="module")
def curve(trained_run):
    data_dir, _ = trained_run
    result = run_stage(CURVE_COMMAND, data_dir)
    return data_dir, os.path.join(data_dir, "runs", "tiny"), result


@pytest.mark.slow
def test_label_curve_writes_its_csv_plot_and_report_section(curve):
    data_dir, run_dir, result = curve
    folder = os.path.join(run_dir, "label_curve")
    with open(os.path.join(folder, "label_curve.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({(row["labels"], row["model"]) for row in rows}) == sorted(
        (count, model) for count in ("40", "all") for model in ("pretrained", "scratch", "bag_of_words"))
    held_out = sum(1 for line in result.stdout.splitlines() if line.startswith("label_curve: ") and ": held-out " in line)
    assert held_out == 6                                                       # a progress line per point
    for row in rows:
        assert row["scored_on"] == "held-out" and 0.0 <= float(row["accuracy"]) <= 1.0
        if row["model"] != "bag_of_words":   # a logistic regression fitted to convergence: no epochs
            assert 1 <= int(row["epoch_picked"]) <= int(row["epochs"])
    assert {row["train_reviews"] for row in rows if row["labels"] == "40"} == {"40"}
    assert {row["seed"] for row in rows} == {"7"}                              # --first-seed, not the config's 42
    assert {row["model"]: row["windows"] for row in rows} == {"pretrained": "3", "scratch": "3", "bag_of_words": "all"}
    with open(os.path.join(folder, "label_curve.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(os.path.join(folder, "manifest.json"))
    report = open(os.path.join(run_dir, "report.md")).read()
    assert report.count("## Sentiment against the number of labels") == 1
    assert "![held-out accuracy against labels](label_curve/label_curve.png)" in report
    assert "# Run `tiny`" in report                                             # the rest of the report is kept
    again = run_stage(CURVE_COMMAND, data_dir)
    assert "label_curve: up to date" in again.stdout


@pytest.mark.slow
def test_a_measured_curve_is_recorded_into_the_results_csvs(curve, tmp_path):
    # lab/record_curve.py is how a curve's rows reach results/ (the docs' tables are drawn from there).
    import json
    import subprocess
    import sys

    from conftest import ROOT

    _, run_dir, _ = curve
    command = [sys.executable, os.path.join(ROOT, "lab", "record_curve.py"), run_dir, "--as", "tiny-test",
               "--pretrain-minutes", "2", "--machine", "test-cpu", "--results", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(tmp_path / "label_curve.csv", newline="") as handle:
        curve_rows = list(csv.DictReader(handle))
    with open(tmp_path / "pretraining_curve.csv", newline="") as handle:
        compute_rows = list(csv.DictReader(handle))
    assert len(curve_rows) == 6 and {row["run"] for row in curve_rows} == {"tiny-test"}
    assert {row["model"]: row["windows"] for row in curve_rows} == {"pretrained": "3", "scratch": "3", "bag_of_words": "all"}
    assert all("family" in row["cpu"] and row["date"] for row in curve_rows)
    # 40 labels is not a compute-curve count (100, 300, 1,000, all): only the "all" rows go there.
    assert sorted(row["model"] for row in compute_rows) == ["bag_of_words", "pretrained", "scratch"]
    steps = json.load(open(os.path.join(run_dir, "metrics.json")))["optimizer_steps"]
    for row in compute_rows:
        pretrained = row["model"] == "pretrained"
        assert row["labels"] == "all" and row["machine"] == "test-cpu"
        assert (row["pretrain_minutes"], int(row["optimizer_steps"])) == (("2", steps) if pretrained else ("0", 0))


def test_label_curve_samples_come_from_the_training_split_only(curve):
    from imdb_bert import classifier, corpus
    from lab import label_efficiency

    data_dir, _, _ = curve
    prepared = os.path.join(data_dir, "prepared")
    reviews = classifier.labelled_reviews(prepared, "train")
    labels = label_efficiency.labels_of(reviews)
    texts = [text.decode() for text, _ in label_efficiency.select(reviews, label_efficiency.balanced_sample(labels, 40, 42),
                                                             len(labels)).as_numpy_iterator()]
    assert len(texts) == 40
    held_out, dev = (set(corpus.split_texts(prepared, split)) for split in ("validation", "dev"))
    assert set(texts) <= set(corpus.split_texts(prepared, "train")) and not set(texts) & (held_out | dev)
    # The dev reviews that pick the epoch are a class-balanced sample (the splits are stored grouped by
    # label), and --dev-only scores the others.
    picking, others = label_efficiency.balanced_part(classifier.labelled_reviews(prepared, "dev"), 20)
    picking, others = list(picking.as_numpy_iterator()), list(others.as_numpy_iterator())
    assert sorted(int(label) for _, label in picking) == [0] * 10 + [1] * 10
    assert not {text for text, _ in picking} & {text for text, _ in others}
    assert len(picking) + len(others) == len(label_efficiency.labels_of(classifier.labelled_reviews(prepared, "dev")))


def test_label_curve_refuses_bad_counts(trained_run):
    data_dir, _ = trained_run
    one_line_error(run_stage(["lab/label_curve.py", "--labels", "100,many"], data_dir, check=False), "--labels", "'many'")


def test_frozen_probe_scores_every_layer_of_both_encoders(trained_run):
    data_dir, _ = trained_run
    result = run_stage(["lab/frozen_probe.py", "--labels", "60"], data_dir)
    path = os.path.join(data_dir, "runs", "frozen_probe.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    os.remove(path)   # the runs folder is shared with the other stage tests
    assert [row["encoder"] for row in rows] == ["pretrained", "random init"]
    for row in rows:
        layers = dict(part.split("=") for part in row["dev_accuracy_per_layer"].split())
        assert list(layers) == ["position_embedding", "block_0", "block_1", "final_norm"]   # the tiny preset: 2 pre-LN blocks
        assert all(0.0 <= float(value) <= 1.0 for value in layers.values())
        assert float(row["best_dev_accuracy"]) == max(float(value) for value in layers.values())
    assert result.stdout.count("frozen_probe: pretrained") == 4


def test_the_logistic_regression_works_on_raw_features():
    # fit_logistic_regression trains on standardised features and folds the standardisation into
    # the weights it returns, so a head that reads raw pooled features can use them as they are.
    from imdb_bert import classifier
    from lab import linear_probe

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    features = rng.normal(size=(400, 6)) * [1, 10, 100, 1, 1, 1] + [5, -50, 300, 0, 0, 0]
    features[:, 0] += 2.0 * labels                                           # one informative feature, off-centre
    kernel, bias = classifier.fit_logistic_regression(features, labels)
    assert np.mean((features @ kernel + bias > 0) == labels) > 0.8
    assert abs(kernel[0]) > 5 * max(abs(kernel[1:]))                        # it reads the informative one
    assert linear_probe.logistic_regression_accuracy(features[:300], labels[:300], features[300:], labels[300:]) > 0.75


@pytest.mark.slow
def test_probe_first_starts_fine_tuning_from_a_fitted_head():
    # LP-FT: before any fine-tuning step, the head reads the frozen encoder: a review's sentiment is
    # whether it holds one word piece, which a random encoder's mean-pooled states still show.
    import keras
    import tensorflow as tf

    from imdb_bert import classifier, inputs
    from imdb_bert.model import BertEncoder, ModelConfig

    keras.utils.set_random_seed(0)
    encoder = BertEncoder(ModelConfig(vocab_size=50, max_seq_len=16, hidden_size=32, num_heads=2, ffn_size=64,
                                      num_layers=1, dropout=0.0, norm_position="pre", activation="gelu",
                                      tie_embeddings=True))
    rng = np.random.default_rng(0)
    windows = rng.integers(10, 50, size=(256, 1, 16)).astype("int32")
    windows[:, 0, 0] = inputs.CLS_ID
    labels = rng.integers(0, 2, 256)
    windows[labels == 1, 0, 1:9] = 7                                          # positives hold word piece 7
    train = tf.data.Dataset.from_tensor_slices((windows, labels)).batch(32)
    model = classifier.SentimentClassifier(encoder)
    before = classifier.evaluate(model, train)["accuracy"]
    classifier.fit_head_on_frozen_encoder(model, train)
    assert classifier.evaluate(model, train)["accuracy"] > max(0.9, before)


# The pays-check at the tiny preset: few labels, one seed, few reviews read; the rows and the fit cache
# are under test, not the accuracy.
PAYS_COMMAND = ["lab/label_curve.py", "--pays", "--dev-only", "--labels", "20,40", "--seeds", "1", "--passes", "20",
                "--set", "classifier_epochs=1"]


def test_the_pays_check_writes_its_row_and_reuses_cached_scratch_fits(trained_run, tmp_path):
    data_dir = copy_data(trained_run, tmp_path, with_runs=True)   # its fit cache and study rows stay out of the shared runs/
    rows_csv = str(tmp_path / "pays_check.csv")
    first = run_stage(PAYS_COMMAND + ["--rows", rows_csv], data_dir)
    again = run_stage(PAYS_COMMAND + ["--rows", rows_csv], data_dir)
    with open(rows_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["fits"] == "6" and row["scored_on"] == "dev" for row in rows)
    assert [row["cached_fits"] for row in rows] == ["0", "4"]   # then scratch and the bag of words
    assert rows[0]["scratch_40"] == rows[1]["scratch_40"] and rows[0]["lead_20"] == rows[1]["lead_20"]
    # Each row names the fine-tuning settings it changed from the preset's (a changed one refits scratch:
    # test_a_scratch_fit_is_keyed_by_the_shape_sample_and_data).
    assert "classifier_epochs=1" in rows[0]["fine_tuning"].split()
    assert "classifier_learning_rate" not in rows[0]["fine_tuning"]
    for result in (first, again):
        verdict = [line for line in result.stdout.splitlines() if line.startswith("label_curve: pays-check: ")]
        assert len(verdict) == 1 and "20 labels" in verdict[0] and "40 labels" in verdict[0]
        assert verdict[0].endswith("(needs >= +0.05 at each, beyond the range)")
    assert "reused from the fit cache" not in first.stdout
    assert again.stdout.count("reused from the fit cache") == 4
    assert "family" in rows[0]["cpu"]


def test_a_scratch_fit_is_keyed_by_the_shape_sample_and_data():
    import dataclasses

    from imdb_bert import classifier
    from lab import label_efficiency
    from imdb_bert.model import ModelConfig

    plan = label_efficiency.CurvePlan(counts=(300,), seeds=(1,))
    settings = classifier.FineTuneConfig(5e-4, 0.1, 0.01, False)
    shape = ModelConfig(vocab_size=8000, max_seq_len=64, hidden_size=128, num_heads=4, ffn_size=512, num_layers=2,
                        dropout=0.0, norm_position="pre", activation="gelu", tie_embeddings=True)
    inputs = {"prepared": "a", "vocab": "b"}
    key = label_efficiency.fit_key(plan, "scratch", 300, 1, inputs, settings, shape)
    assert key == label_efficiency.fit_key(plan, "scratch", 300, 1, dict(inputs), settings, shape)
    changed = [label_efficiency.fit_key(plan, "scratch", 300, 1, inputs, settings, dataclasses.replace(shape, num_layers=4)),
               label_efficiency.fit_key(plan, "scratch", 300, 2, inputs, settings, shape),
               label_efficiency.fit_key(plan, "scratch", 1000, 1, inputs, settings, shape),
               label_efficiency.fit_key(plan, "scratch", 300, 1, {**inputs, "vocab": "c"}, settings, shape),
               label_efficiency.fit_key(dataclasses.replace(plan, max_windows=8), "scratch", 300, 1, inputs, settings, shape),
               label_efficiency.fit_key(plan, "scratch", 300, 1, inputs,
                                        dataclasses.replace(settings, classifier_learning_rate=7e-4), shape)]
    assert key not in changed and len(set(changed)) == len(changed)
    # The bag of words reads no encoder: another shape reuses its fit.
    assert (label_efficiency.fit_key(plan, "bag_of_words", 300, 1, inputs, settings, shape)
            == label_efficiency.fit_key(plan, "bag_of_words", 300, 1, inputs, settings, dataclasses.replace(shape, num_layers=4)))


def test_the_pays_verdict_needs_the_lead_at_every_count_beyond_the_range():
    from lab import label_efficiency

    def rows(pretrained_300, pretrained_1000):
        made = []
        for count, pretrained, scratch in ((300, pretrained_300, [0.70, 0.71, 0.72]), (1000, pretrained_1000, [0.78, 0.78, 0.79])):
            for seed, (p, s) in enumerate(zip(pretrained, scratch)):
                made += [{"model": "pretrained", "train_reviews": count, "accuracy": p, "seed": seed},
                         {"model": "scratch", "train_reviews": count, "accuracy": s, "seed": seed}]
        return made

    assert label_efficiency.pays_verdict(rows([0.77, 0.78, 0.76], [0.84, 0.85, 0.83]))["pays"]
    assert not label_efficiency.pays_verdict(rows([0.77, 0.78, 0.76], [0.82, 0.83, 0.81]))["pays"]   # +0.04 at 1,000
    wide = label_efficiency.pays_verdict(rows([0.71, 0.80, 0.80], [0.84, 0.85, 0.83]))    # +0.06, worst seed within
    assert not wide["pays"] and not wide["leads"][300]["beyond_range"]
