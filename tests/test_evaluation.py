"""evaluate.py and the held-out measures behind it: the fixed-protocol masked-token numbers, the
word-level cloze set (held-out text only, deterministic) and report.md, on the tiny preset."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import config
from conftest import ROOT, copy_data, masked_lm_for, one_line_error, rerecord_manifest, run_stage, stage_environment
from imdb_bert import corpus, evaluation, report, vocab


def evaluate(*arguments, check=True):
    """evaluate.py as a user runs it: run folders as arguments (each carries its own data_dir)."""
    result = subprocess.run([sys.executable, "evaluate.py", *arguments], cwd=ROOT, env=stage_environment(),
                            capture_output=True, text=True, timeout=900)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def evaluated(trained_run):
    data_dir, _ = trained_run
    run_dir = os.path.join(data_dir, "runs", "tiny")
    result = evaluate(run_dir, "--json")
    return data_dir, run_dir, result, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_cloze_set_comes_from_held_out_text_only_and_is_deterministic(evaluated):
    data_dir, _, _, _ = evaluated
    prepared = os.path.join(data_dir, "prepared")
    held_out = corpus.split_texts(prepared, "validation")
    manifest = json.load(open(os.path.join(data_dir, "cloze", "manifest.json")))
    assert manifest["inputs"]["prepared"] == json.load(open(os.path.join(prepared, "manifest.json")))["fingerprint"]
    cloze = evaluation.read_cloze(os.path.join(data_dir, "cloze"))
    assert len(cloze) == manifest["sentences"] > 200
    held_out_words = [" ".join(evaluation.words_of(text)) for text in held_out]
    for item in cloze[:300]:
        sentence = item["text"].replace("[MASK]", item["answer"])
        assert any(sentence in text for text in held_out_words), sentence
        assert item["text"].count("[MASK]") == 1
    words = {item["answer"] for item in cloze}
    again = evaluation.build_cloze_set(held_out, words, evaluation.PROTOCOL_SEED)
    other = evaluation.build_cloze_set(held_out, words, evaluation.PROTOCOL_SEED + 1)
    assert again[:len(cloze)] == evaluation.build_cloze_set(held_out, words, evaluation.PROTOCOL_SEED)[:len(cloze)]
    assert again != other
    # Each answer is one whole word piece at every preset's vocabulary size (learned from the training split).
    train = corpus.split_texts(prepared, "train")
    counts = [(word, count) for word, count in vocab.count_words(train).items() if count >= 2]
    for size in config.PRESET_VOCAB_SIZES:
        assert words <= set(vocab.learn_wordpiece(counts, size)), size


def test_evaluate_matches_training_and_a_random_model_scores_near_zero(evaluated):
    data_dir, run_dir, result, row = evaluated
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert row["masked_accuracy"] == pytest.approx(metrics["validation_masked_accuracy"], abs=1e-6)
    assert row["perplexity"] == pytest.approx(metrics["validation_perplexity"], rel=1e-5)
    assert row["cloze_top5"] == pytest.approx(metrics["cloze_top5"], abs=1e-9)
    tokens = vocab.read_vocabulary(os.path.join(run_dir, "vocab.txt"))
    untrained = masked_lm_for(config.make_config("tiny"), len(tokens))
    cloze = evaluation.read_cloze(os.path.join(data_dir, "cloze"))
    chance = evaluation.cloze_scores(untrained, vocab.make_tokenizer(tokens), tokens, cloze, 64)
    assert chance["cloze_top5"] < 0.03 and chance["cloze_top1"] < 0.01
    assert row["cloze_top5"] > chance["cloze_top5"] + 0.05      # the tiny run learned something
    assert row["cloze_top5"] >= row["cloze_top1"]


def test_report_md_reads_on_its_own(evaluated):
    _, run_dir, _, _ = evaluated
    report = open(os.path.join(run_dir, "report.md")).read()
    for part in ["# Run `tiny`", "fixed protocol", "word-level cloze top-5", "recorded runs of this preset and shape",
                 "0.977", "0.844", "## Probe per epoch", "- epoch 3:", "curves.png"]:
        assert part in report, part
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    assert "report.md" not in manifest["files"]   # rewriting it never makes the run look changed


def test_a_run_is_compared_with_the_recorded_runs_of_its_shape_at_its_own_step_count():
    references = report.read_references(os.path.join(ROOT, "tests", "fixtures", "references.csv"))
    cpu = config.make_config("cpu", {})
    shape = {"max_seq_len": cpu.max_seq_len, "batch_size": cpu.batch_size}
    recorded = report.references_for(references, "cpu", shape)
    assert recorded and not report.references_for(references, "cpu", {"max_seq_len": 48, "batch_size": 7})
    steps = sorted(int(row["optimizer_steps"]) for row in recorded)
    # At a recorded step count: the range of the runs within 10% of it.
    low, high, how = report.expected_at(recorded, "masked_accuracy", steps[0])
    assert low <= high and "within 10% of its steps" in how
    # Between recorded runs: interpolated in log steps, between the two neighbours' values.
    gap = max(zip(steps, steps[1:]), key=lambda pair: pair[1] / pair[0])
    middle = int((gap[0] * gap[1]) ** 0.5)
    value, same, how = report.expected_at(recorded, "masked_accuracy", middle)
    neighbours = [float(row["masked_accuracy"]) for row in recorded if int(row["optimizer_steps"]) in gap]
    assert value == same and min(neighbours) <= value <= max(neighbours) and "interpolated" in how
    # Outside what was recorded: no comparison, and the report says so.
    assert report.expected_at(recorded, "masked_accuracy", steps[-1] * 3) is None
    text = report.render("r", "cpu", {"optimizer_steps": steps[-1] * 3, "masked_accuracy": 0.5}, shape, [], False,
                         references)
    assert "outside what was recorded" in text
    assert report.read_references(os.path.join(ROOT, "no-such.csv")) == []


def test_rewriting_a_report_keeps_the_sections_other_tools_added(tmp_path):
    report.write(str(tmp_path), "# Run `r`\n\n## Anchors\n\nold anchors\n")
    report.put_section(str(tmp_path), "## Added by a tool", "## Added by a tool\n\nits table\n")
    report.write(str(tmp_path), "# Run `r`\n\n## Anchors\n\nnew anchors\n")
    report.put_section(str(tmp_path), "## Added by a tool", "## Added by a tool\n\nits new table\n")
    text = open(tmp_path / "report.md").read()
    assert text == "# Run `r`\n\n## Anchors\n\nnew anchors\n\n## Added by a tool\n\nits new table\n"


@pytest.mark.slow
def test_compare_puts_runs_with_other_settings_side_by_side(evaluated, float32_runs, tmp_path):
    _, run_dir, _, _ = evaluated
    folder = tmp_path / "runs"
    # The tiny run beside one trained with post-LN blocks, in float32, for one epoch (conftest.float32_runs).
    shutil.copytree(run_dir, folder / "tiny")
    shutil.copytree(float32_runs["post"][1], folder / "post")
    runs = [str(folder / name) for name in ("tiny", "post")]
    # `runs/*` as a shell gives it: a file and a folder that is no run come along, and are skipped.
    (folder / "study.csv").write_text("")
    (folder / "fit_cache").mkdir()
    strays = [str(folder / name) for name in ("study.csv", "fit_cache")]
    # Each copied run names the data folder it was trained on, and both hold the same held-out reviews.
    result = evaluate("--compare", *runs, *strays)
    assert [line for line in result.stdout.splitlines() if line.startswith("evaluate: skipping ")] == [
        f"evaluate: skipping {path}: not a finished run folder (no manifest.json)" for path in strays]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header, tiny, post = ([cell.strip() for cell in line.split("|")[1:-1]] for line in (table[0], table[2], table[3]))
    assert "cloze@5" in header and (tiny[0], post[0]) == ("tiny", "post")
    assert (tiny[header.index("norm_position")], post[header.index("norm_position")]) == ("pre", "post")


@pytest.mark.slow
def test_a_folder_that_is_not_a_finished_run_is_one_line(evaluated, tmp_path):
    data_dir, _, _, _ = evaluated
    result = evaluate(str(tmp_path), check=False)
    one_line_error(result, "has no finished output", "run: python model_training.py")


@pytest.mark.slow
def test_a_run_whose_prepared_data_changed_is_one_line(evaluated, tmp_path):
    data_dir, run_dir, _, _ = evaluated
    copied = copy_data((data_dir, None), tmp_path)
    shutil.copytree(run_dir, os.path.join(copied, "runs", "tiny"))
    settings_path = os.path.join(copied, "runs", "tiny", "config.json")
    settings = json.load(open(settings_path))
    settings["data_dir"] = copied
    json.dump(settings, open(settings_path, "w"))
    rerecord_manifest(os.path.join(copied, "runs", "tiny"))   # as if trained here
    run_stage(["data_prep.py", "--force"], copied, "split_seed=7")
    result = evaluate(os.path.join(copied, "runs", "tiny"), check=False)
    one_line_error(result, "was trained on other prepared data", "rerun python model_training.py")
