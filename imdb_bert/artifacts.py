"""Where each stage's outputs live, and the one way to write and read them.

A stage writes its whole output folder under a temporary name and renames it into place only
after the manifest is written, so a folder that exists with a manifest is finished; a crash
leaves at most a `*.partial-*` folder that nobody reads. The fingerprint of an output is a hash
of all its files, recorded in its manifest. Which stage depends on what, and whether an output
is current, is `pipeline.py`'s business.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

MANIFEST = "manifest.json"
# A run's report.md is rewritten in place by evaluate.py (once a classifier exists, say), so it is
# not part of the run's files or fingerprint: refreshing it never makes the run look changed.
REPORT = "report.md"
SENTIMENT_EXPORT = "sentiment_export"   # inside classifier_dir(run_dir)

# Writing failures that mean "the disk is full", not a bug.
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class StageError(Exception):
    """A user-facing problem: the message says what is wrong and what to run."""

    user_error = True


def raw_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "raw")


def prepared_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "prepared")


def vocab_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "vocab")


def classifier_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "classifier")


def vocab_path(data_dir: str) -> str:
    return os.path.join(vocab_dir(data_dir), "vocab.txt")


@contextlib.contextmanager
def atomic_dir(final_path: str):
    """Yield a fresh temporary folder; on success it replaces `final_path` whole.

    On any exception the temporary folder is removed and `final_path` is left as it was; a full
    disk becomes a StageError saying so.
    """
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=os.path.basename(final_path) + ".partial-", dir=parent)
    os.chmod(temporary, 0o755)
    try:
        yield temporary
        if os.path.exists(final_path):
            retired = final_path + ".old-" + str(os.getpid())
            os.replace(final_path, retired)
            os.replace(temporary, final_path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, final_path)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if error.errno in _DISK_FULL:
            raise StageError(f"could not write {final_path}: {os.strerror(error.errno)} — the previous "
                             f"{os.path.basename(final_path)} (if any) is untouched; free disk space and rerun") from None
        raise
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_json(path: str, value) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(value, out, indent=2, sort_keys=False)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def append_row(path: str, row: dict) -> None:
    """Append `row` to the CSV file at `path` (its keys are the header, written when the file is new):
    a study's results, kept as each run ends so a stopped study loses nothing."""
    import csv

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = list(row)
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if set(row) - set(header):
            # A column the file lacks (a study that measures more now): rewrite it with the wider header,
            # the older rows empty there.
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            header += [key for key in row if key not in header]
            with open(path + ".tmp", "w", newline="", encoding="utf-8") as out:
                writer = csv.DictWriter(out, header)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(path + ".tmp", path)
    new = not os.path.isfile(path)
    with open(path, "a", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, header, restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def file_digests(folder: str) -> dict:
    """Every file under `folder` (but a manifest and report.md): `files` (name -> size), `file_sha256` (name ->
    content hash) and `fingerprint` (a hash of all of them), as a manifest records them."""
    files, hashes = {}, {}
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative in (MANIFEST, REPORT):
                continue
            files[relative], hashes[relative] = os.path.getsize(path), file_sha256(path)
    return {"fingerprint": fingerprint_of(hashes), "files": files, "file_sha256": hashes}


def fingerprint_of(hashes: dict[str, str]) -> str:
    """The fingerprint of an output: a hash of its files' names and content hashes, in listing order."""
    digest = hashlib.sha256()
    for name, content in hashes.items():
        digest.update(f"{name}\0{content}\0".encode())
    return digest.hexdigest()[:16]


def write_manifest(folder: str, stage: str, identity: dict, **fields) -> dict:
    """Write `folder/manifest.json`: the stage, its identity, the given fields, and every file
    in `folder` with its size and content hash, plus a fingerprint (hash) of all of them."""
    digests = file_digests(folder)
    manifest = {"stage": stage, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **identity,
                "fingerprint": digests["fingerprint"], **fields, "files": digests["files"], "file_sha256": digests["file_sha256"]}
    write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def damage(folder: str, manifest: dict) -> str | None:
    """What is wrong with the files of `folder` against the `manifest` written with them — the first file
    missing, of another size, or with other contents — or None when all are as written. A manifest
    written before per-file hashes were recorded is checked against its fingerprint of all files."""
    for name, size in manifest.get("files", {}).items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        found = os.path.getsize(path)
        if found != size:
            return f"{name} is {'shorter' if found < size else 'longer'} than written ({found:,} bytes, not {size:,})"
    hashes = manifest.get("file_sha256")
    if hashes is None:
        if "files" not in manifest:
            return None   # download.sh's manifest records the archive's hash, not each file's
        hashes = {name: file_sha256(os.path.join(folder, name)) for name in manifest["files"]}
        return None if fingerprint_of(hashes) == manifest.get("fingerprint") else "a file changed since it was written"
    for name, expected in hashes.items():
        if file_sha256(os.path.join(folder, name)) != expected:
            return f"{name} changed since it was written (same size, other contents)"
    return None


def check_files(folder: str, manifest: dict, remedy: str) -> None:
    """StageError naming the damaged file of `folder` (see `damage`) and `remedy`; nothing if intact."""
    problem = damage(folder, manifest)
    if problem:
        raise StageError(f"{folder} is damaged: {problem} — copy it again from where it came, or {remedy}")


def read_manifest(folder: str, missing_hint: str, damaged_hint: str | None = None) -> dict:
    """The manifest of a finished stage output whose files are all as written, or StageError saying
    which stage to run (`missing_hint`) or which file is damaged (and `damaged_hint`, by default the same)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise StageError(f"{folder} has no finished output ({MANIFEST} missing): {missing_hint}")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise StageError(f"{path} is unreadable ({error}): {missing_hint}") from None
    check_files(folder, manifest, damaged_hint or missing_hint)
    return manifest


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def texts_from_command_line(given: list[str], file: str | None, what: str) -> list[str]:
    """The texts a script was given as arguments plus the non-empty lines of `file` (- is stdin)."""
    texts = list(given)
    if file:
        handle = sys.stdin if file == "-" else open(file, encoding="utf-8", errors="replace")
        with handle:
            texts += [line.strip() for line in handle if line.strip()]
    if not texts:
        raise StageError(f"no {what} given: pass one in quotes, or --file FILE (- for stdin)")
    return texts
