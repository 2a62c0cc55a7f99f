"""Stage 5 and the raw-string exports: classifier_training.py --compare-scratch on the tiny run, and
both exports reloaded in a fresh process that has neither our package nor the vocab file."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import one_line_error, run_stage

PHRASES = ["i have watched this [MASK] and it was awesome", "the [MASK] was [MASK] ."]
REVIEWS = ["a wonderful film with a moving story and great acting", "boring , badly acted and far too long",
           "", "word " * 300]


@pytest.fixture(scope="module")
def classified(trained_run):
    data_dir, _ = trained_run
    result = run_stage(["classifier_training.py", "--compare-scratch"], data_dir)
    return data_dir, os.path.join(data_dir, "runs", "tiny"), result


def test_compare_scratch_reports_three_models_on_the_same_held_out_reviews(classified):
    data_dir, run_dir, result = classified
    metrics = json.load(open(os.path.join(run_dir, "classifier", "metrics.json")))
    prepared = json.load(open(os.path.join(data_dir, "prepared", "manifest.json")))
    labels = prepared["splits"]["validation"]["labels"]
    names = ["fine_tuned_pretrained", "same_architecture_from_scratch", "bag_of_words_logistic_regression"]
    for name in names:
        counts = np.array(metrics[name]["confusion_matrix"]["counts"])
        # Rows are the true labels: they must add up to the held-out split's label counts.
        assert counts.sum(axis=1).tolist() == [labels["neg"], labels["pos"]], name
        assert metrics[name]["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
        assert metrics[name]["loss"] > 0
        assert name in result.stdout
    assert metrics["held_out_reviews"] == labels["neg"] + labels["pos"]
    # Stage 5 learns: its training accuracy ends well above the majority class. (Held out, 280
    # training reviews are too few for the tiny encoder: 0.41-0.55 measured.)
    with open(os.path.join(run_dir, "classifier", "history_pretrained.csv")) as handle:
        trained = [float(row["accuracy"]) for row in csv.DictReader(handle)]
    train_labels = prepared["splits"]["train"]["labels"]
    majority = max(train_labels["neg"], train_labels["pos"]) / (train_labels["neg"] + train_labels["pos"])
    assert trained[-1] > majority + 0.1 and trained[-1] > trained[0], (trained, majority)
    # The epoch kept is the one with the best dev accuracy (first of equals), not the last one.
    with open(os.path.join(run_dir, "classifier", "history_pretrained.csv")) as handle:
        on_dev = [float(row["val_accuracy"]) for row in csv.DictReader(handle)]
    picked = metrics["fine_tuned_pretrained"]
    assert picked["epoch_picked_on_dev"] == int(np.argmax(on_dev)) + 1 and picked["dev_accuracy"] == pytest.approx(max(on_dev))
    assert metrics["dev_reviews"] == sum(prepared["splits"]["dev"]["labels"][name] for name in ("neg", "pos"))
    assert os.path.isfile(os.path.join(run_dir, "classifier", "classifier.keras"))
    assert "Traceback" not in result.stderr


def test_held_out_reviews_are_never_trained_on(classified):
    from imdb_bert import corpus

    data_dir, _, _ = classified
    prepared = os.path.join(data_dir, "prepared")
    train, dev, held_out = (set(corpus.split_texts(prepared, split)) for split in ("train", "dev", "validation"))
    assert held_out and dev and train and not train & held_out and not train & dev and not dev & held_out


@pytest.mark.slow
def test_rerun_is_up_to_date_and_a_changed_run_is_stale(classified, tmp_path):
    data_dir, _, _ = classified
    again = run_stage(["classifier_training.py", "--compare-scratch"], data_dir)
    assert "classifier_training: up to date" in again.stdout
    stale = run_stage(["classifier_training.py"], data_dir, "learning_rate=0.01", check=False)
    one_line_error(stale, "is stale", "learning_rate", "rerun python model_training.py")


@pytest.mark.slow
def test_dev_only_adds_a_study_row_and_leaves_the_classifier_alone(classified):
    data_dir, run_dir, _ = classified
    manifest = os.path.join(run_dir, "classifier", "manifest.json")
    finished = open(manifest).read()
    result = run_stage(["classifier_training.py", "--dev-only"], data_dir, "classifier_windows=head_tail",
                       "classifier_dropout=0.2", "classifier_epochs=2")
    study = os.path.join(data_dir, "runs", "fine_tune_study.csv")
    with open(study) as handle:
        rows = list(csv.DictReader(handle))
    os.remove(study)   # the runs folder is shared with the other stage tests
    row = rows[-1]
    assert (row["classifier_windows"], row["classifier_dropout"]) == ("head_tail", "0.2")
    on_dev = [float(value) for value in row["dev_accuracy_per_epoch"].split()]
    assert len(on_dev) == 2 and float(row["dev_accuracy"]) == max(on_dev)
    assert int(row["epoch_picked"]) == on_dev.index(max(on_dev)) + 1
    assert "dev accuracy" in result.stdout and "held-out accuracy" not in result.stdout
    assert open(manifest).read() == finished   # the finished classifier is not touched


FRESH_PROCESS = """
import json, sys
try:
    import imdb_bert  # noqa: F401
    sys.exit("our package is importable here: the test would prove nothing")
except ImportError:
    pass
import numpy as np, tensorflow as tf, tensorflow_text  # noqa: F401
folder, texts = sys.argv[1], json.loads(sys.argv[2])
signature = json.load(open(folder + "/export.json"))["signature"]
outputs = tf.saved_model.load(folder).signatures[signature](tf.constant(texts))

def plain(value):
    value = value.numpy()
    return np.vectorize(bytes.decode, otypes=[object])(value).tolist() if value.dtype == object else value.tolist()

print(json.dumps({name: plain(value) for name, value in outputs.items()}))
"""


def run_fresh(export_folder, texts, tmp_path):
    """Copy the export alone to an empty folder and run it from a process that cannot import us."""
    alone = tmp_path / "alone" / os.path.basename(export_folder)
    shutil.copytree(export_folder, alone)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(alone), json.dumps(texts)], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sentiment_export_matches_the_keras_classifier_in_a_fresh_process(classified, tmp_path):
    import config
    from imdb_bert import inputs, probe, vocab

    _, run_dir, _ = classified
    outputs = run_fresh(os.path.join(run_dir, "classifier", "sentiment_export"), REVIEWS, tmp_path)
    settings = config.make_config("tiny")
    model = probe.load_model(os.path.join(run_dir, "classifier", "classifier.keras"))
    tokenizer = vocab.make_tokenizer(vocab.read_vocabulary(os.path.join(run_dir, "vocab.txt")))
    expected = []
    for review in REVIEWS:   # one at a time: no padding from other reviews
        windows = inputs.review_windows(tokenizer, [review], settings.max_seq_len, settings.classifier_max_windows)
        logit = float(np.asarray(model(windows.to_tensor(), training=False)).reshape(-1)[0])
        expected.append(1 / (1 + np.exp(-logit)))
    assert outputs["probability_positive"] == pytest.approx(expected, abs=0.01)   # bf16: graph vs eager rounding
    assert outputs["label"] == ["positive" if p > 0.5 else "negative" for p in outputs["probability_positive"]]
    assert len(set(np.round(outputs["probability_positive"], 4))) > 1   # not a constant


def test_fill_mask_export_matches_the_keras_fills_in_a_fresh_process(classified, tmp_path):
    from imdb_bert import probe

    _, run_dir, _ = classified
    outputs = run_fresh(os.path.join(run_dir, "fill_mask_export"), PHRASES, tmp_path)
    model, tokenizer, tokens, run_config = probe.load_run(run_dir)
    assert outputs["mask_count"] == [1, 2]
    for row, phrase in enumerate(PHRASES):
        # Every token's probability from the Keras model, to look up the export's top-k in. The run is
        # bf16: graph (export) and eager (Keras) kernels round differently, by up to ~0.01 here.
        fills = probe.top_k_fills(model, tokenizer, tokens, phrase, len(tokens), run_config["max_seq_len"])
        for mask_index in range(outputs["mask_count"][row]):
            keras_fills = [fill for fill in fills if fill.get("mask_index", 0) == mask_index]
            probability = {fill["predicted mask token"]: fill["probability"] for fill in keras_fills}
            exported = dict(zip(outputs["tokens"][row][mask_index], outputs["probabilities"][row][mask_index]))
            assert len(exported) == run_config["top_k"]
            for token, value in exported.items():
                assert value == pytest.approx(probability[token], abs=0.01), token
            if keras_fills[0]["probability"] - keras_fills[1]["probability"] > 0.02:   # a clear winner
                assert outputs["tokens"][row][mask_index][0] == keras_fills[0]["predicted mask token"]


@pytest.mark.slow
def test_predict_serves_both_exports(classified):
    data_dir, run_dir, _ = classified
    sentiment = run_stage(["predict.py", "--json", REVIEWS[0]], data_dir)
    (result,) = json.loads(sentiment.stdout)
    assert result["label"] in ("positive", "negative") and 0.0 <= result["probability_positive"] <= 1.0
    fills = run_stage(["predict.py", "--export", os.path.join(run_dir, "fill_mask_export"), "--json", PHRASES[0]],
                      data_dir)
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    first = json.loads(fills.stdout)[0]
    assert first["predicted mask token"] in [fill["predicted mask token"] for fill in metrics["probe"]]
    too_long = run_stage(["predict.py", "--export", os.path.join(run_dir, "fill_mask_export"),
                          "[MASK] " + "word " * 200], data_dir, check=False)
    one_line_error(too_long, "longer than 64 word pieces")
    missing = run_stage(["predict.py", "--export", str(run_dir), "text"], data_dir, check=False)
    one_line_error(missing, "is not a finished export")
