"""The bad-input matrix (docs/bad-input.md): each case is one `error:` line and exit code 2, or —
for damaged text — a count in the manifest instead of a crash; nothing finished is lost."""

import hashlib
import http.server
import json
import os
import resource
import signal
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import (ROOT, copy_data, make_archive, one_line_error, rerecord_manifest, run_stage, stage_command,
                      stage_environment)


def download_and_prepare(tmp_path, reviews):
    """download.sh (official path, local archive of `reviews`) then data_prep.py; returns both results."""
    path, sha256 = make_archive(str(tmp_path), reviews)
    data_dir = str(tmp_path / "data")
    download = run_stage(["./download.sh"], data_dir, check=False, environment=stage_environment(
        IMDB_BERT_URL="file://" + path, IMDB_BERT_SHA256=sha256))
    return data_dir, download, run_stage(["data_prep.py"], data_dir, check=False)


@pytest.mark.slow
def test_empty_review_files_are_dropped_and_counted(tmp_path, fixture_reviews):
    reviews = [("", 1), ("   <br /><br />  ", 0)] + fixture_reviews[:60]
    data_dir, _, prepared = download_and_prepare(tmp_path, reviews)
    assert prepared.returncode == 0, prepared.stderr
    counts = json.load(open(os.path.join(data_dir, "prepared", "manifest.json")))
    assert counts["empty_dropped"] == 2 and counts["kept"] == 60


@pytest.mark.slow
def test_a_source_of_only_empty_reviews_is_one_line(tmp_path):
    _, _, prepared = download_and_prepare(tmp_path, [("", 1), (" ", 0), ("<br />", 1)])
    one_line_error(prepared, "only 0 non-empty distinct reviews", "./download.sh --force")


@pytest.mark.slow
def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, fixture_reviews):
    bad = (b"caf\xe9 au lait, a \xff\xfe fine film", 1)
    data_dir, _, prepared = download_and_prepare(tmp_path, [bad] + fixture_reviews[:40])
    assert prepared.returncode == 0, prepared.stderr
    assert "undecodable=1" in prepared.stdout
    assert json.load(open(os.path.join(data_dir, "prepared", "manifest.json")))["undecodable_reviews"] == 1


@pytest.mark.slow
def test_archive_without_the_expected_listing_is_refused(tmp_path, fixture_reviews):
    source = tmp_path / "elsewhere"
    source.mkdir()
    (source / "readme.txt").write_text("not the IMDB archive")
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(source, arcname="elsewhere")
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    result = run_stage(["./download.sh", "--source", "official"], str(tmp_path / "data"), check=False,
                       environment=stage_environment(IMDB_BERT_URL=f"file://{path}", IMDB_BERT_SHA256=sha256))
    one_line_error(result, "listing mismatch")
    assert not (tmp_path / "data" / "raw" / "official").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script, hint", [
    ("data_prep.py", "run ./download.sh first"),
    ("tokeniser_build.py", "run: python data_prep.py"),
    ("model_training.py", "run: python data_prep.py"),
    ("fill_mask.py", "run: python model_training.py"),
])
def test_a_stage_run_before_its_predecessor_names_what_to_run(tmp_path, script, hint):
    arguments = [script, "a [MASK] film"] if script == "fill_mask.py" else [script]
    one_line_error(run_stage(arguments, str(tmp_path), check=False), hint)


def test_vocab_file_missing_a_reserved_token_is_refused(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    path = os.path.join(data_dir, "vocab", "vocab.txt")
    tokens = open(path, encoding="utf-8").read().splitlines()
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(token for token in tokens if token != "[MASK]") + "\n")
    rerecord_manifest(os.path.dirname(path))   # a vocabulary made elsewhere, not one damaged on the way
    one_line_error(run_stage(["model_training.py"], data_dir, check=False), "lacks [MASK]",
                   "rerun python tokeniser_build.py --force")


def test_probe_without_mask_is_refused_before_training(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    result = run_stage(["model_training.py"], data_dir, "probe_phrases=a phrase with no mask", check=False)
    one_line_error(result, "probe phrase 'a phrase with no mask' has no [MASK]")
    assert "Epoch 1" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("setting, message", [
    ("no_such_key=1", "unknown config key 'no_such_key'"),
    ("vocab_size=-5", "vocab_size must be positive"),
    ("mask_rate=1.2", "mask_rate must be between 0 and 1"),
    ("num_heads=3", "num_heads (3) must divide hidden_size (64)"),
    ("steps_per_execution=7", "steps_per_execution must be a positive divisor of steps_per_epoch (30), got 7"),
    ("embedding_init=glove", "embedding_init must be one of random, ppmi_svd, got 'glove'"),
])
def test_bad_config_on_the_command_line_is_one_line(tmp_path, setting, message):
    one_line_error(run_stage(["tokeniser_build.py"], str(tmp_path), setting, check=False), message)


def test_disk_full_while_writing_shards_keeps_the_previous_output(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    prepared = os.path.join(data_dir, "prepared")
    before = {name: open(os.path.join(prepared, name), "rb").read() for name in os.listdir(prepared)}

    def small_disk():  # files may not grow past 20 kB: the first shard hits it like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run(stage_command(["data_prep.py", "--force"], data_dir), cwd=ROOT, env=stage_environment(),
                            capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    one_line_error(result, "could not write", "File too large", "untouched")
    after = {name: open(os.path.join(prepared, name), "rb").read() for name in os.listdir(prepared)}
    assert after == before
    assert not [name for name in os.listdir(data_dir) if "partial" in name]


class TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Serves an endless-looking archive slowly, like a download that takes minutes."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(80_000_000))
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 2048)
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *arguments):
        pass


@pytest.mark.slow
def test_ctrl_c_during_download_leaves_nothing_taken_as_complete(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TrickleHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data_dir = str(tmp_path / "data")
    url = f"http://127.0.0.1:{server.server_address[1]}/aclImdb_v1.tar.gz"
    download = subprocess.Popen(stage_command(["./download.sh", "--source", "official"], data_dir), cwd=ROOT,
                                env=stage_environment(IMDB_BERT_URL=url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                # A shell that starts pytest as a background job hands it SIGINT ignored,
                                # and download.sh would inherit that; a terminal's Ctrl-C finds it default.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    part = os.path.join(data_dir, "raw", "archive", "aclImdb_v1.tar.gz.part")
    deadline = time.time() + 60
    while not (os.path.isfile(part) and os.path.getsize(part) > 4096) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(download.pid, signal.SIGINT)   # what Ctrl-C in a terminal sends
    _, stderr = download.communicate(timeout=60)
    server.shutdown()
    assert download.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert os.path.isfile(part)                                     # kept to resume, never used as is
    assert not os.path.exists(os.path.join(data_dir, "raw", "archive", "aclImdb_v1.tar.gz"))
    assert not os.path.exists(os.path.join(data_dir, "raw", "official"))
    one_line_error(run_stage(["data_prep.py"], data_dir, check=False), "no raw reviews", "./download.sh")


def test_a_vocab_size_too_small_to_spell_the_corpus_is_one_line_before_learning(built_data, tmp_path):
    data_dir = copy_data(built_data, tmp_path)
    result = run_stage(["tokeniser_build.py"], data_dir, "vocab_size=100", check=False)
    one_line_error(result, "vocab_size 100 is too small to hold the", "set a larger vocab_size")
    assert "learned from" not in result.stdout
    assert not os.path.exists(os.path.join(data_dir, "vocab", "vocab.txt")) or \
        json.load(open(os.path.join(data_dir, "vocab", "manifest.json")))["vocab_size"] == 1000   # untouched


@pytest.mark.parametrize("top_k", ["0", "-3"])
def test_fill_mask_refuses_a_top_k_that_is_not_positive(trained_run, top_k):
    result = run_stage(["fill_mask.py", "--top-k", top_k, "the [MASK] was good"], trained_run[0], check=False)
    one_line_error(result, f"--top-k must be a positive number of fills, got {top_k}")


def test_a_library_version_other_than_the_checked_one_is_one_line():
    from imdb_bert import artifacts, private_apis

    private_apis.require("keras")   # the pinned version is what is installed
    with pytest.raises(artifacts.StageError, match=r"keras 3\.99\.0 is installed, but imdb-bert relies on private "
                                                   r"parts of keras 3\.15\.1 .*pip install -r requirements.txt"):
        private_apis.require("keras", installed="3.99.0")


def test_a_run_saved_by_an_older_version_is_one_line(trained_run, tmp_path):
    data_dir = copy_data(trained_run, tmp_path)
    import shutil

    old_run = os.path.join(data_dir, "runs", "old")
    shutil.copytree(os.path.join(trained_run[0], "runs", "tiny"), old_run)
    manifest_path = os.path.join(old_run, "manifest.json")
    manifest = json.load(open(manifest_path))
    del manifest["inputs"]["model_format"]        # what runs saved before the encoder/head split carry
    json.dump(manifest, open(manifest_path, "w"))
    result = run_stage(["fill_mask.py", "--run", old_run, "the [MASK] was good"], data_dir, check=False)
    one_line_error(result, "was saved by an older imdb-bert (model format 1, this code reads 2)",
                   "rerun python model_training.py --force")
