"""download.sh for real: a local archive served by file:// URL stands in for the official one."""

import hashlib
import json
import os
import time

import pytest

from conftest import make_archive, run_stage, stage_environment


@pytest.fixture(scope="module")
def archive(tmp_path_factory, fixture_reviews):
    return make_archive(str(tmp_path_factory.mktemp("archive")), fixture_reviews[:60])


def download(data_dir, url, sha256, *arguments, check=False):
    environment = stage_environment(IMDB_BERT_URL=url, IMDB_BERT_SHA256=sha256)
    return run_stage(["./download.sh", *arguments], data_dir, environment=environment, check=check)


def test_official_archive_is_verified_unpacked_and_not_fetched_twice(tmp_path, archive):
    path, sha256 = archive
    first = download(str(tmp_path), "file://" + path, sha256, check=True)
    assert "source=official" in first.stdout and "60 reviews" in first.stdout
    manifest = json.load(open(tmp_path / "raw" / "official" / "manifest.json"))
    assert manifest["source"] == "official" and manifest["sha256"] == sha256 and manifest["reviews"] == 60
    again = download(str(tmp_path), "file:///nonexistent", sha256, check=True)
    assert "up to date" in again.stdout


def test_checksum_mismatch_is_refused(tmp_path, archive):
    path, _ = archive
    result = download(str(tmp_path), "file://" + path, "0" * 64, "--source", "official")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: checksum mismatch")
    assert not (tmp_path / "raw" / "official").exists()
    assert not (tmp_path / "raw" / "archive" / "aclImdb_v1.tar.gz").exists()
    bad = tmp_path / "raw" / "archive" / "aclImdb_v1.tar.gz.bad"   # kept aside for a look, never used
    assert bad.read_bytes() == open(path, "rb").read()


def test_truncated_archive_is_refused(tmp_path, archive):
    path, _ = archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(open(path, "rb").read()[:3000])
    sha256 = hashlib.sha256(truncated.read_bytes()).hexdigest()
    result = download(str(tmp_path / "data"), "file://" + str(truncated), sha256, "--source", "official")
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr
    assert not (tmp_path / "data" / "raw" / "official").exists()
    bad = tmp_path / "data" / "raw" / "archive" / "aclImdb_v1.tar.gz.bad"
    assert bad.read_bytes() == truncated.read_bytes() and f"moved it to" in result.stderr
    assert not [name for name in os.listdir(tmp_path / "data" / "raw") if "partial" in name]


def test_closed_network_fails_fast_then_falls_back_to_the_package(tmp_path):
    started = time.time()
    refused = download(str(tmp_path), "http://imdb.invalid/aclImdb_v1.tar.gz", "0" * 64, "--source", "official")
    assert refused.returncode == 2 and "--source package" in refused.stderr
    fallback = download(str(tmp_path), "http://imdb.invalid/aclImdb_v1.tar.gz", "0" * 64, check=True)
    assert time.time() - started < 60
    assert "falling back" in fallback.stderr and "source=package" in fallback.stdout
    manifest = json.load(open(tmp_path / "raw" / "package" / "manifest.json"))
    assert manifest["reviews"] == 25000 and manifest["positive"] == 12500


def test_unknown_source_is_one_line(tmp_path):
    result = download(str(tmp_path), "file:///x", "0" * 64, "--source", "web")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "source must be" in result.stderr
