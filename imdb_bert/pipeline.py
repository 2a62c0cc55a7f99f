"""The wiring between stages: which stage made what, what it depends on, and whether it is current.

Every stage's output folder carries a manifest (written by `artifacts.write_manifest`) with its
*identity*: the config values the stage depends on and the fingerprints of the inputs it read.

- A stage whose identity is unchanged does nothing when rerun (`skip_if_up_to_date`).
- A stage that reads an upstream output built for other config values, or from older inputs,
  refuses with the command to rerun (`read_current`).
- The command of each stage, and so every "rerun ..." hint, lives here (`COMMANDS`, `rerun`).

Imports nothing heavy: a stage decides it is up to date before TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from imdb_bert import artifacts
from imdb_bert.artifacts import StageError

COMMANDS = {"download": "./download.sh", "data_prep": "python data_prep.py",
            "tokeniser_build": "python tokeniser_build.py", "model_training": "python model_training.py",
            "classifier_training": "python classifier_training.py"}
# A config key added after runs were made declares (config.key's `upgrade`) the value that
# reproduces those runs; a key without one has this marker.
NOT_ADDED = "(not added since runs were made)"
# The layout of a saved model. Runs saved in an older layout are refused with one line, and count
# as out of date, so model_training.py retrains them.
MODEL_FORMAT = 2
# What `corpus.clean_review` does to a review. Prepared data cleaned by an older version counts as
# out of date, so data_prep.py rebuilds it (and the vocabulary and runs downstream follow).
CLEANING_FORMAT = 2


def rerun(stage: str, flags: str = "") -> str:
    """The hint that ends a message about `stage`'s output: `rerun python tokeniser_build.py --force`."""
    return f"rerun {COMMANDS[stage]}{' ' + flags if flags else ''}"


def settings(kind, config, **values):
    """An instance of the small config dataclass `kind` (a model's shape, a masking scheme...) with
    its fields taken from the pipeline `config`, except those given in `values`."""
    taken = {field.name: getattr(config, field.name) for field in dataclasses.fields(kind)
             if field.name not in values}
    return kind(**taken, **values)


def stage_identity(config, keys, inputs: dict[str, str]) -> dict:
    """What a stage's output depends on: the `keys` of `config` and the input fingerprints."""
    values = config.as_dict()
    return {"config": {key: values[key] for key in keys}, "inputs": dict(inputs)}


def stage_keys(config, *stages: str) -> tuple[str, ...]:
    """The keys of `config` declared (config.py) as first changing the output of one of `stages`
    (data_prep, vocab, training, classifier), in declaration order."""
    return tuple(field.name for field in dataclasses.fields(config) if field.metadata.get("stage") in stages)


def training_keys(config) -> tuple[str, ...]:
    """What a trained run depends on: its own keys and its upstream stages'. Where files go, how often
    to checkpoint, what to print, which devices share the work and fine-tuning do not retrain it."""
    return stage_keys(config, "data_prep", "vocab", "training")


def upgrade_values(config) -> dict:
    """Each key added since runs were made, with the value that reproduces what they did."""
    return {field.name: field.metadata["upgrade"] for field in dataclasses.fields(config)
            if field.metadata.get("upgrade", NOT_ADDED) != NOT_ADDED}


def changed_values(old: dict, new: dict) -> str:
    """`key old -> new` for each value that differs, for messages."""
    return ", ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}"
                     for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))


# Config keys renamed since (`validation` means the held-out split everywhere; the per-epoch checks
# run on the dev split): `--set` takes the old name with a note, and a manifest under the old name
# was built with that value.
RENAMED_KEYS = {"validation_batches": "dev_batches"}


def built_config(manifest: dict, config) -> dict:
    """The config values a manifest was built with, a key added since counting as its old behaviour
    (`upgrade_values` of `config`) and a renamed key under its new name."""
    built = {RENAMED_KEYS.get(key, key): value for key, value in manifest.get("config", {}).items()}
    return {**upgrade_values(config), **built}


def built_with(manifest: dict, identity: dict, config) -> bool:
    """True when the output of `manifest` (or an unfinished run's saved identity) was built with exactly
    `identity`: the same inputs and config values, a key added since counting as its old behaviour."""
    built = built_config(manifest, config)
    return ({key: built.get(key) for key in identity["config"]} == identity["config"]
            and manifest.get("inputs") == identity["inputs"] and not retired_values(manifest, config))


def retired_values(manifest: dict, config) -> str:
    """`key=value` of each key this version no longer has (`config.RETIRED_KEYS`) that `manifest` was
    built with another value of than the one every current output has; empty if none."""
    built = manifest.get("config", {})
    return ", ".join(f"{key}={built[key]!r}" for key, value in getattr(config, "RETIRED_KEYS", {}).items()
                     if key in built and built[key] != value)


def skip_if_up_to_date(stage: str, folder: str, identity: dict, force: bool, config) -> bool:
    """True (after saying so) when `force` is off and `folder` was built with exactly `identity`
    and all its files are as written; else False (the stage must run, and rebuilds a damaged folder)."""
    if force:
        return False
    try:
        with open(os.path.join(folder, artifacts.MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return False
    if not built_with(manifest, identity, config) or artifacts.damage(folder, manifest):
        return False
    print(f"{stage}: up to date — {folder} was built from the same inputs and config (--force redoes it)")
    return True


def read_current(folder: str, stage: str, config, keys, input_fingerprints: dict[str, str] | None = None) -> dict:
    """The manifest of upstream `stage`'s output, refusing if it is missing, was built for other
    values of `keys` than `config` has, or from other inputs than `input_fingerprints`."""
    manifest = artifacts.read_manifest(folder, f"run: {COMMANDS[stage]}", rerun(stage))
    wanted = stage_identity(config, keys, {})["config"]
    gone = retired_values(manifest, config)
    if gone:
        raise StageError(f"{folder} is stale: it was made with {gone}, which this version no longer builds: "
                         f"{rerun(stage, '--force')}")
    built = built_config(manifest, config)
    newer = {key: wanted[key] for key in keys if key not in built}
    if newer:
        raise StageError(f"{folder} is stale: it was made before the config key(s) {', '.join(newer)} existed, whose "
                         f"value(s) here ({', '.join(f'{key}={value!r}' for key, value in newer.items())}) change what "
                         f"it builds: {rerun(stage)}")
    built = {key: built.get(key) for key in keys}
    if built != wanted:
        raise StageError(f"{folder} is stale: it was built for {changed_values(built, wanted).replace('->', 'but config says')}"
                         f": {rerun(stage)}")
    for name, fingerprint in (input_fingerprints or {}).items():
        if name == "cleaning" and manifest.get("inputs", {}).get(name, "1") != fingerprint:
            raise StageError(f"{folder} is stale: its reviews were cleaned by an older imdb-bert (cleaning format "
                             f"{manifest.get('inputs', {}).get(name, '1')}, this code writes {fingerprint}): "
                             f"{rerun(stage)}")
        if manifest.get("inputs", {}).get(name) != fingerprint:
            raise StageError(f"{folder} is stale: it was built from an older {name} output than the one "
                             f"there now: {rerun(stage)}")
    return manifest


def find_raw(source: str, data_dir: str) -> tuple[str, str | None, dict]:
    """(source, raw folder, its manifest) of the configured `source`; `auto` takes the official
    reviews if download.sh unpacked them, else the package copy. TFDS has no raw folder."""
    if source == "tfds":
        return "tfds", None, {"fingerprint": "tfds:imdb_reviews", "origin": "tensorflow-datasets imdb_reviews"}
    raw = artifacts.raw_dir(data_dir)
    if source == "auto":
        present = [name for name in ("official", "package")
                   if os.path.isfile(os.path.join(raw, name, artifacts.MANIFEST))]
        if not present:
            raise StageError(f"no raw reviews in {raw}: run {COMMANDS['download']} first")
        source = present[0]
    folder = os.path.join(raw, source)
    manifest = artifacts.read_manifest(folder, f"run {COMMANDS['download']} --source {source}")
    # download.sh's manifests carry the archive's (or CSV's) SHA-256 as their fingerprint.
    manifest.setdefault("fingerprint", manifest.get("sha256", "")[:16])
    return source, folder, manifest


def current_raw_inputs(source: str, data_dir: str) -> dict[str, str]:
    """What data_prep would build from now: `{"raw": fingerprint, "cleaning": format}`, to check that the
    prepared data is not stale; without "raw" if the raw reviews were deleted (nothing to compare)."""
    try:
        raw = {"raw": find_raw(source, data_dir)[2]["fingerprint"]}
    except StageError:
        raw = {}
    return dict(raw, cleaning=str(CLEANING_FORMAT))


def current_prepared(config) -> dict:
    """The prepared data's manifest, refused in one line if missing or stale for `config`."""
    return read_current(artifacts.prepared_dir(config.data_dir), "data_prep", config, stage_keys(config, "data_prep"),
                        current_raw_inputs(config.source, config.data_dir))


def current_training_inputs(config) -> tuple[dict, dict]:
    """(prepared manifest, {"prepared": fingerprint, "vocab": fingerprint}) of the data a model is trained
    on, each refused in one line (StageError) if missing or stale for `config`."""
    prepared = current_prepared(config)
    vocabulary = read_current(artifacts.vocab_dir(config.data_dir), "tokeniser_build", config,
                              stage_keys(config, "vocab"), {"prepared": prepared["fingerprint"]})
    return prepared, {"prepared": prepared["fingerprint"], "vocab": vocabulary["fingerprint"]}


def training_identity(config) -> dict:
    """The identity of a training run: every training key, the prepared data and vocabulary it
    reads, and the model format (so a run saved in an older layout counts as out of date)."""
    _, inputs = current_training_inputs(config)
    return stage_identity(config, training_keys(config), dict(inputs, model_format=str(MODEL_FORMAT)))


def current_run(config) -> dict:
    """The manifest of the config's finished training run, refused in one line (StageError) if it, or
    the prepared data and vocabulary it was trained on, is missing or stale for `config`."""
    return read_current(config.run_dir, "model_training", config, training_keys(config),
                        training_identity(config)["inputs"])


def read_run(run_dir: str, config, other_run: str = "") -> dict:
    """The manifest of a finished training run, refused in one line if it is missing, was saved in an
    older model format than this code reads, or was made with a value of a key this version no longer
    has (`config.RETIRED_KEYS`; the Config class will do). `other_run` says how the calling command
    names another run folder (its own flag), for the message."""
    manifest = artifacts.read_manifest(run_dir, f"run: {COMMANDS['model_training']}{other_run}",
                                       f"{rerun('model_training')} to train it again")
    found = manifest.get("inputs", {}).get("model_format", "1")
    if found != str(MODEL_FORMAT):
        raise StageError(f"{run_dir} was saved by an older imdb-bert (model format {found}, this code reads "
                         f"{MODEL_FORMAT}): {rerun('model_training', '--force')}")
    gone = retired_values(manifest, config)
    if gone:
        raise StageError(f"{run_dir} is stale: it was made with {gone}, which this version no longer builds: "
                         f"{rerun('model_training', '--force')}")
    return manifest


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
        print("interrupted: finished outputs are untouched, nothing half-written is kept; rerun to "
              "continue (training resumes from its last checkpoint)", file=sys.stderr)
        sys.exit(130)
