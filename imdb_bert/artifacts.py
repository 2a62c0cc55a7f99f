"""Where each stage's outputs live, and the one way to write and read them.

A stage writes its whole output folder under a temporary name and renames it into place only
after the manifest is written, so a folder that exists with a manifest is finished; a crash
leaves at most a `*.partial-*` folder that nobody reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

MANIFEST = "manifest.json"


class StageError(Exception):
    """A user-facing problem: the message says what is wrong and what to run."""

    user_error = True


def raw_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "raw")


def prepared_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "prepared")


def vocab_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "vocab")


def vocab_path(data_dir: str) -> str:
    return os.path.join(vocab_dir(data_dir), "vocab.txt")


@contextlib.contextmanager
def atomic_dir(final_path: str):
    """Yield a fresh temporary folder; on success it replaces `final_path` whole.

    On any exception the temporary folder is removed and `final_path` is left as it was.
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


def write_manifest(folder: str, stage: str, **fields) -> dict:
    """Write `folder/manifest.json` recording the stage, the time and the given fields."""
    manifest = {"stage": stage, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def read_manifest(folder: str, missing_hint: str) -> dict:
    """The manifest of a finished stage output, or StageError saying which stage to run."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise StageError(f"{folder} has no finished output ({MANIFEST} missing): {missing_hint}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise StageError(f"{path} is unreadable ({error}): {missing_hint}") from None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_stage(main) -> None:
    """Run a stage's `main()`: user errors become one line on stderr and exit code 2."""
    try:
        main()
    except Exception as error:
        # StageError, and config.py's ConfigError, mark themselves as the user's to fix.
        if not getattr(error, "user_error", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        sys.exit(130)
