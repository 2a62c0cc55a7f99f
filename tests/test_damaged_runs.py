"""Finished folders are checked against their manifests when read: a damaged file is named in one
line, nothing is rewritten; a folder written before the check existed still loads."""

import glob
import hashlib
import json
import os
import shutil

import subprocess
import sys

import pytest

from conftest import ROOT, copy_data, one_line_error, run_stage, stage_environment
from imdb_bert import artifacts, resume

RUN = os.path.join("runs", "tiny")


def evaluate(run_dir, check=True):
    """evaluate.py as a user runs it (a run folder carries its own data_dir)."""
    result = subprocess.run([sys.executable, "evaluate.py", run_dir], cwd=ROOT, env=stage_environment(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 or not check, result.stderr
    return result


def cut_short(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def replace_vocab_with_a_shorter_one(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(lines[: len(lines) // 2]) + "\n")


def edit_config(path):
    """The window length changed by hand, the file's size kept."""
    text = open(path, encoding="utf-8").read()
    assert '"max_seq_len": 64,' in text
    open(path, "w", encoding="utf-8").write(text.replace('"max_seq_len": 64,', '"max_seq_len": 16,'))


def contents(folder):
    """Every file under `folder` with the hash of its bytes."""
    return {os.path.relpath(path, folder): hashlib.sha256(open(path, "rb").read()).hexdigest()
            for path in glob.glob(os.path.join(folder, "**"), recursive=True) if os.path.isfile(path)}


@pytest.mark.parametrize("name, damage, says", [
    ("model.keras", cut_short, "model.keras is shorter than written"),
    ("best.keras", cut_short, "best.keras is shorter than written"),
    ("vocab.txt", replace_vocab_with_a_shorter_one, "vocab.txt is shorter than written"),
    ("config.json", edit_config, "config.json changed since it was written"),
    ("fill_mask_export/variables/variables.index", os.remove, "fill_mask_export/variables/variables.index is missing"),
])
def test_a_damaged_run_folder_is_named_by_every_reader(trained_run, tmp_path, name, damage, says):
    data_dir = copy_data(trained_run, tmp_path, with_runs=True)
    run_dir = os.path.join(data_dir, RUN)
    damage(os.path.join(run_dir, name))
    before = contents(run_dir)
    for result in (run_stage(["fill_mask.py", "--run", run_dir, "a [MASK] film"], data_dir, check=False),
                   evaluate(run_dir, check=False), run_stage(["classifier_training.py"], data_dir, check=False)):
        one_line_error(result, f"{run_dir} is damaged: {says}", "copy it again", "python model_training.py")
    assert contents(run_dir) == before


def test_an_export_missing_a_file_is_named_by_predict(trained_run, tmp_path):
    export = str(tmp_path / "fill_mask_export")
    shutil.copytree(os.path.join(trained_run[0], RUN, "fill_mask_export"), export)
    os.remove(os.path.join(export, "saved_model.pb"))
    one_line_error(run_stage(["predict.py", "--export", export, "a [MASK] film"], trained_run[0], check=False),
                   f"{export} is damaged: saved_model.pb is missing", "rerun python model_training.py")


def test_a_truncated_shard_is_refused_before_tokenising(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    shard = sorted(glob.glob(os.path.join(data_dir, "prepared", "train-*")))[0]
    cut_short(shard)
    result = run_stage(["model_training.py"], data_dir, check=False)
    one_line_error(result, "prepared is damaged", f"{os.path.basename(shard)} is shorter than written",
                   "rerun python data_prep.py")
    assert "Epoch" not in result.stdout and not os.path.exists(os.path.join(data_dir, "runs"))


def test_a_vocab_edited_by_hand_is_refused_then_rebuilt_by_its_stage(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    path = os.path.join(data_dir, "vocab", "vocab.txt")
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[-1], lines[-2] = lines[-2], lines[-1]   # same size, other contents
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    one_line_error(run_stage(["model_training.py"], data_dir, check=False),
                   "vocab is damaged: vocab.txt changed since it was written", "rerun python tokeniser_build.py")
    rebuilt = run_stage(["tokeniser_build.py"], data_dir)
    assert "up to date" not in rebuilt.stdout
    assert artifacts.damage(os.path.dirname(path), json.load(open(os.path.join(data_dir, "vocab", "manifest.json")))) is None


def write_checkpoint(folder, step, size):
    name = f"state-{step:09d}.weights.h5"
    with open(os.path.join(folder, name), "wb") as out:
        out.write(b"\0" * size)
    return {"epoch": 0, "step": step, "global_step": step, "weights": name, "weights_bytes": 100}


def test_an_unfinished_run_resumes_from_the_last_intact_checkpoint(tmp_path, capsys):
    folder = str(tmp_path)
    older = write_checkpoint(folder, 10, 100)
    newest = dict(write_checkpoint(folder, 20, 40), previous=older)   # cut short by a kill or a copy
    artifacts.write_json(os.path.join(folder, resume.STATE), newest)
    assert resume.read_state(folder) == older
    assert "cut short (40 of 100 bytes); resuming from the checkpoint before it" in capsys.readouterr().out
    os.remove(os.path.join(folder, older["weights"]))
    with pytest.raises(artifacts.StageError, match=r"cannot be resumed: checkpoint state-000000020.weights.h5 is cut "
                                                   r"short .* and checkpoint state-000000010.weights.h5 is missing "
                                                   r"— add --force to start over"):
        resume.read_state(folder)


def test_a_run_made_before_a_key_that_changes_training_existed_is_stale_and_says_which(trained_run, tmp_path):
    data_dir = copy_data(trained_run, tmp_path, with_runs=True)
    path = os.path.join(data_dir, RUN, "manifest.json")
    manifest = json.load(open(path))
    del manifest["config"]["short_seq_len"]   # declared with no upgrade value: its absence is not "off"
    json.dump(manifest, open(path, "w"), indent=2)
    one_line_error(run_stage(["classifier_training.py"], data_dir, check=False),
                   "is stale: it was made before the config key(s) short_seq_len existed, whose value(s) here "
                   "(short_seq_len=0) change what it builds: rerun python model_training.py")


# The last release before manifests recorded each file's hash (and before history.csv said dev_*).
PREVIOUS_RELEASE = "77f5fa5"


def test_a_run_folder_trained_by_the_previous_release_still_loads_and_is_still_checked(built_data, tmp_path):
    import io
    import tarfile

    archive = subprocess.run(["git", "-C", ROOT, "archive", PREVIOUS_RELEASE], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"not a git checkout with {PREVIOUS_RELEASE} in its history: {archive.stderr.decode()[:200]}")
    previous = str(tmp_path / "previous")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as files:
        files.extractall(previous)
    data_dir = copy_data(built_data, tmp_path)
    # float32 as the tiny preset has trained since (that release's tiny left it at auto).
    command = [sys.executable, "model_training.py", "--set", f"data_dir={data_dir}",
               "--set", f"runs_dir={os.path.join(data_dir, 'runs')}", "--set", "mixed_precision=float32"]
    trained = subprocess.run(command, cwd=previous, env=dict(stage_environment(), PYTHONPATH=previous),
                             capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = os.path.join(data_dir, RUN)
    assert "file_sha256" not in json.load(open(os.path.join(run_dir, "manifest.json")))   # the old format
    fills = json.loads(run_stage(["fill_mask.py", "--run", run_dir, "--json", "a [MASK] film"], data_dir).stdout)
    assert len(fills) == 5
    assert "masked-token accuracy" in evaluate(run_dir).stdout
    assert "up to date" in run_stage(["model_training.py"], data_dir).stdout
    # Without per-file hashes, a file changed in it is still caught, by the fingerprint of all files.
    edit_config(os.path.join(run_dir, "config.json"))
    one_line_error(run_stage(["fill_mask.py", "--run", run_dir, "a [MASK] film"], data_dir, check=False),
                   "is damaged: a file changed since it was written")
