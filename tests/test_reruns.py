"""Re-runnable stages: up-to-date skips, --force, stale refusals, and training that resumes after
being killed, all on the real stage scripts with the tiny preset."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, copy_data, one_line_error, run_stage, stage_command, stage_environment


def manifest(data_dir, *parts):
    with open(os.path.join(data_dir, *parts, "manifest.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory):
    """A copy of the data with the finished tiny training run (3 epochs of 30 steps, a checkpoint
    every 10), never interrupted."""
    return copy_data(trained_run, tmp_path_factory.mktemp("trained"), with_runs=True)


def test_rerunning_the_whole_pipeline_with_nothing_changed_does_nothing(trained):
    before = manifest(trained, "runs", "tiny")
    result = subprocess.run(stage_command(["./run_pipeline.sh"], trained), cwd=ROOT,
                            env=stage_environment(IMDB_BERT_URL="file:///nonexistent"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for stage in ["download", "data_prep", "tokeniser_build", "model_training"]:
        assert f"{stage}: up to date" in result.stdout, stage
    assert "Epoch 1" not in result.stdout
    assert manifest(trained, "runs", "tiny")["written_at"] == before["written_at"]


def test_a_run_made_before_a_config_key_existed_stays_current(trained_run, tmp_path):
    """A manifest written by an older version lacks the keys added since (declared with an `upgrade`
    value in config.py); it counts as built with those values, which reproduce what that version did."""
    import config
    from imdb_bert import pipeline

    data_dir = copy_data(trained_run, tmp_path, with_runs=True)
    path = os.path.join(data_dir, "runs", "tiny", "manifest.json")
    older = manifest(data_dir, "runs", "tiny")
    added = pipeline.upgrade_values(config.make_config("tiny"))
    assert {"steps_per_execution", "classifier_probe_first"} <= set(added)
    for key in added:
        older["config"].pop(key, None)
    for old_name, new_name in pipeline.RENAMED_KEYS.items():   # and a renamed key under its old name
        older["config"][old_name] = older["config"].pop(new_name)
    with open(path, "w") as out:
        json.dump(older, out)
    assert "model_training: up to date" in run_stage(["model_training.py"], data_dir).stdout
    assert "predicted mask token" in run_stage(["fill_mask.py", "a [MASK] film"], data_dir).stdout
    # A key whose value changes what is trained still makes the run stale, named in the message.
    one_line_error(run_stage(["lab/frozen_probe.py"], data_dir, "mask_rate=0.2", check=False),
                   "is stale", "mask_rate 0.15 but config says 0.2")
    # A run made with a value of a key this version no longer has (ELECTRA pretraining) is stale too.
    older["config"]["objective"] = "electra"
    with open(path, "w") as out:
        json.dump(older, out)
    evaluate = subprocess.run([sys.executable, "evaluate.py", os.path.dirname(path)], cwd=ROOT, env=stage_environment(),
                              capture_output=True, text=True, timeout=300)   # it takes run folders, no --set
    for result in (run_stage(["classifier_training.py"], data_dir, check=False),
                   run_stage(["fill_mask.py", "a [MASK] film"], data_dir, check=False), evaluate):
        one_line_error(result, "is stale", "objective='electra', which this version no longer builds",
                       "rerun python model_training.py --force")


def test_force_redoes_an_up_to_date_stage(trained):
    before = manifest(trained, "vocab")
    again = run_stage(["tokeniser_build.py"], trained)
    assert "up to date" in again.stdout
    forced = run_stage(["tokeniser_build.py", "--force"], trained)
    assert "vocab size 1000" in forced.stdout
    assert manifest(trained, "vocab")["fingerprint"] == before["fingerprint"]  # same inputs, same vocab


def test_a_changed_value_rebuilds_that_stage_and_downstream_refuses_the_stale_output(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    rebuilt = run_stage(["tokeniser_build.py"], data_dir, "vocab_size=900")
    assert "vocab size 900" in rebuilt.stdout
    stale = run_stage(["model_training.py"], data_dir, check=False)
    one_line_error(stale, "vocab is stale", "vocab_size 900 but config says 1000", "rerun python tokeniser_build.py")


def test_new_prepared_data_makes_the_vocab_stale(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    run_stage(["data_prep.py"], data_dir, "split_seed=7")
    old_split = run_stage(["tokeniser_build.py"], data_dir, check=False)
    one_line_error(old_split, "prepared is stale", "split_seed 7 but config says 1234", "rerun python data_prep.py")
    vocab_behind = run_stage(["model_training.py"], data_dir, "split_seed=7", check=False)
    one_line_error(vocab_behind, "vocab is stale", "older prepared output", "rerun python tokeniser_build.py")


def test_data_cleaned_by_an_older_version_is_rebuilt(built_data, tmp_path):
    """Prepared data made before the review cleaning changed (its manifest has no cleaning format) is
    refused downstream with the reason, and data_prep.py rebuilds it."""
    data_dir = copy_data(built_data, tmp_path)
    path = os.path.join(data_dir, "prepared", "manifest.json")
    older = manifest(data_dir, "prepared")
    del older["inputs"]["cleaning"]
    with open(path, "w") as out:
        json.dump(older, out)
    one_line_error(run_stage(["tokeniser_build.py"], data_dir, check=False), "prepared is stale",
                   "cleaned by an older imdb-bert (cleaning format 1, this code writes 2)", "rerun python data_prep.py")
    assert "up to date" not in run_stage(["data_prep.py"], data_dir).stdout
    rebuilt = manifest(data_dir, "prepared")
    assert rebuilt["inputs"]["cleaning"] == "2"
    # The stages after it accept the rebuilt data; they run again only if the cleaning changed its
    # files (the fixture's reviews may hold nothing today's cleaning changes).
    vocab_stage = run_stage(["tokeniser_build.py"], data_dir).stdout
    assert ("up to date" in vocab_stage) == (rebuilt["fingerprint"] == older["fingerprint"])


def wait_for_mid_epoch_state(process, state_path, epoch, timeout=600):
    """Poll the training state until it is `epoch` (0-based) with some steps done in it."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            with open(state_path) as handle:
                state = json.load(handle)
            if state["epoch"] == epoch and state["step"] > 0:
                return state
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"training never checkpointed mid-epoch {epoch + 1} (exit code {process.poll()})")


def run_history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as handle:
        rows = list(csv.DictReader(handle))
    return [int(row["epoch"]) for row in rows], [float(row["dev_loss"]) for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(trained):
    """The run the interrupted ones must end up equal to: same data, config and seed, never stopped."""
    run_dir = os.path.join(trained, "runs", "tiny")
    return run_history(run_dir), json.load(open(os.path.join(run_dir, "metrics.json")))


def stop_mid_epoch(data_dir, log_path, epoch, stop):
    """Start (or resume) training, stop it with `stop` once it has checkpointed mid-`epoch`; returns that state."""
    with open(log_path, "w") as log:
        # SIGINT at its default, as under a terminal (a shell's background job would start us with it ignored).
        process = subprocess.Popen(stage_command(["model_training.py"], data_dir), cwd=ROOT,
                                   env=stage_environment(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        state = wait_for_mid_epoch_state(process, os.path.join(data_dir, "runs", "tiny.inprogress", "state.json"),
                                         epoch=epoch)
        os.killpg(process.pid, stop)
        code = process.wait(timeout=120)
    output = open(log_path).read()
    assert code == {signal.SIGKILL: -9, signal.SIGTERM: -15, signal.SIGINT: 130}[stop], output[-2000:]
    if stop == signal.SIGINT:
        assert "interrupted: " in output and "Traceback" not in output
    assert not os.path.exists(os.path.join(data_dir, "runs", "tiny"))   # nothing looks finished
    return state


def test_training_stopped_mid_epoch_resumes_to_the_uninterrupted_run(built_data, tmp_path, uninterrupted):
    """Ctrl-C in epoch 1 and SIGKILL in epoch 2 (SIGTERM, unhandled, ends the process as SIGKILL does),
    each resumed from its checkpoint."""
    data_dir = copy_data(built_data, tmp_path)
    stopped = [stop_mid_epoch(data_dir, tmp_path / "ctrl-c.log", 0, signal.SIGINT)]
    other = run_stage(["model_training.py"], data_dir, "learning_rate=0.001", check=False)
    one_line_error(other, "unfinished run with other settings", "learning_rate 0.003 -> 0.001", "--force")
    stopped.append(stop_mid_epoch(data_dir, tmp_path / "sigkill.log", 1, signal.SIGKILL))
    assert "resuming" in open(tmp_path / "sigkill.log").read()
    assert [state["epoch"] for state in stopped] == [0, 1]
    assert all(state["global_step"] == 30 * state["epoch"] + state["step"] for state in stopped)

    resumed = run_stage(["model_training.py"], data_dir)
    assert "resuming" in resumed.stdout and "at epoch 2, step" in resumed.stdout
    assert resumed.stdout.count("Epoch ") == 2                       # the rest of epoch 2, then epoch 3
    run_dir = os.path.join(data_dir, "runs", "tiny")
    (epochs, losses), metrics = run_history(run_dir), json.load(open(os.path.join(run_dir, "metrics.json")))
    (baseline_epochs, baseline_losses), baseline = uninterrupted
    assert epochs == baseline_epochs == [0, 1, 2]
    assert metrics["epochs"] == baseline["epochs"] == 3
    assert metrics["optimizer_steps"] == baseline["optimizer_steps"] == 3 * 30   # no step lost or repeated
    # Each resume trained on the same batches and masks from the same weights as the uninterrupted run.
    assert losses == pytest.approx(baseline_losses, rel=1e-3)
    assert metrics["validation_masked_cross_entropy"] == pytest.approx(baseline["validation_masked_cross_entropy"],
                                                                        rel=1e-3)
    for name in ["model.keras", "best.keras", "history.csv", "metrics.json", "manifest.json"]:
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert not os.path.exists(os.path.join(data_dir, "runs", "tiny.inprogress"))


def test_nan_loss_stops_with_a_clear_message(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    result = run_stage(["model_training.py"], data_dir, "learning_rate=1e30", "warmup_steps=1",
                       "steps_per_epoch=20", check=False)
    one_line_error(result, "loss became NaN in epoch 1", "lower --set learning_rate")
    assert not os.path.exists(os.path.join(data_dir, "runs", "tiny"))
