"""Training that survives being killed: an in-progress folder, checkpoints, and the plan to resume.

A run trains in `<run_dir>.inprogress/`, next to where the finished run folder will appear. It holds
`identity.json` (the config and inputs the run is for), `history.csv`, `best.keras` (Keras'
`ModelCheckpoint`, best validation loss) and the training state: `state.json` naming a
`state-<step>.weights.h5` file with the model and optimizer weights, its size, and the epoch and step
it was saved at, and the state before it. A new weights file is complete before `state.json` points
at it, so a kill at any moment leaves the previous state usable.

Keras' `BackupAndRestore` was the first choice. In Keras 3.15 it can save every N steps and keep a
second copy (`double_checkpoint=True`), so a kill during a write loses nothing; but on restore it
only sets the epoch to start from, so an interrupted epoch restarts from its first batch and
repeats the steps already done. This module resumes mid-epoch at the step it stopped.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil
import time
import zipfile

import keras

from imdb_bert import artifacts, monitoring, pipeline

STATE = "state.json"
IDENTITY = "identity.json"
HISTORY = "history.csv"
PROBE_HISTORY = "probe.jsonl"
BEST_MODEL = "best.keras"


def work_dir(run_dir: str) -> str:
    return run_dir.rstrip("/") + ".inprogress"


def open_work_dir(folder: str, identity: dict, force: bool, config) -> dict | None:
    """Create `folder` for a new run, or return the saved state of the unfinished run there.

    An unfinished run for another config or other inputs is never thrown away silently: it is
    refused unless `force` is set, which starts over. (`config` declares the keys added since.)
    """
    if force and os.path.isdir(folder):
        shutil.rmtree(folder)
    saved_identity = None
    if os.path.isdir(folder):
        try:
            with open(os.path.join(folder, IDENTITY), encoding="utf-8") as handle:
                saved_identity = json.load(handle)
        except (OSError, json.JSONDecodeError):
            shutil.rmtree(folder)  # killed before it even recorded what it was for: nothing to keep
    if saved_identity is not None:
        if not pipeline.built_with(saved_identity, identity, config):
            built = pipeline.built_config(saved_identity, config)
            changed = pipeline.changed_values({key: built.get(key) for key in identity["config"]}, identity["config"]) or \
                "the prepared data or vocabulary changed"
            raise artifacts.StageError(
                f"{folder} holds an unfinished run with other settings ({changed}): rerun with the same "
                "config to resume it, or add --force to start over")
        return read_state(folder)
    os.makedirs(folder)
    artifacts.write_json(os.path.join(folder, IDENTITY), identity)
    return None


def read_state(folder: str) -> dict | None:
    """The last intact training state in `folder` — the newest checkpoint, or the one before it if the
    newest is missing or cut short (a kill or a bad copy) — or None if the run has saved none yet.
    A state file that names no intact checkpoint is refused in one line."""
    try:
        with open(os.path.join(folder, STATE), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    problems = []
    for candidate in (state, state.get("previous")):
        if not candidate:
            continue
        path = os.path.join(folder, candidate["weights"])
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is not None and size == candidate.get("weights_bytes", size):
            if candidate is not state:
                print(f"model_training: {problems[0]}; resuming from the checkpoint before it", flush=True)
            return {key: value for key, value in candidate.items() if key != "previous"}
        problems.append(f"checkpoint {candidate['weights']} is " + (
            "missing" if size is None else f"cut short ({size:,} of {candidate['weights_bytes']:,} bytes)"))
    raise artifacts.StageError(f"{folder} cannot be resumed: {' and '.join(problems)} — add --force to start over")


def restore(model: keras.Model, folder: str, state: dict) -> None:
    """Load the model and optimizer weights of `state` into a built, compiled `model`."""
    model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(os.path.join(folder, state["weights"]))
    except (OSError, ValueError) as error:
        raise artifacts.StageError(f"{folder} cannot be resumed: checkpoint {state['weights']} is unreadable "
                                   f"({str(error).splitlines()[0][:120]}) — add --force to start over") from None
    restored = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if restored != state["global_step"]:
        raise artifacts.StageError(f"the checkpoint in {folder} is inconsistent (optimizer at step {restored}, "
                                   f"state says {state['global_step']}): add --force to start over")


def fit_plan(state: dict | None, epochs: int, steps_per_epoch: int) -> list[tuple[int, int, int]]:
    """`(initial_epoch, epochs, steps_per_epoch)` for each `fit` call that finishes the run.

    Resuming mid-epoch first runs only the steps that epoch still lacks, so no step is repeated
    or skipped and the epoch numbering stays that of an uninterrupted run.
    """
    epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    plan = []
    if step and epoch < epochs:
        plan.append((epoch, epoch + 1, steps_per_epoch - step))
        epoch += 1
    if epoch < epochs:
        plan.append((epoch, epochs, steps_per_epoch))
    return plan


def trim_history(folder: str, epochs_done: int) -> list[dict]:
    """Drop history rows of epochs the resumed run will redo (and name the dev columns `dev_*` in a history
    written before they were); return the rows kept."""
    path = os.path.join(folder, HISTORY)
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept = [monitoring.dev_named(row) for row in rows if int(row["epoch"]) < epochs_done]
    if len(kept) != len(rows) or any(key.startswith("val_") for key in (rows[0] if rows else {})):
        with open(path + ".tmp", "w", newline="", encoding="utf-8") as out:
            if kept:
                writer = csv.DictWriter(out, fieldnames=list(kept[0]))
                writer.writeheader()
                writer.writerows(kept)
        os.replace(path + ".tmp", path)
    return kept


def best_validation_loss(folder: str, rows: list[dict]) -> float | None:
    """The best dev loss so far, for `ModelCheckpoint`'s threshold, if `best.keras` is intact."""
    path = os.path.join(folder, BEST_MODEL)
    losses = [float(monitoring.dev_value(row, "loss")) for row in rows if monitoring.dev_value(row, "loss")]
    if not losses or not os.path.isfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is None:
                return min(losses)
    except zipfile.BadZipFile:
        pass
    os.remove(path)  # killed while ModelCheckpoint wrote it; the next epoch writes a new one
    return None


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the model and optimizer weights and the position in training at each epoch end and
    every `every_steps` steps or `every_seconds` seconds (whichever is set), atomically. Put it after
    the logging callbacks, so an epoch's history row is written before the state that says the epoch
    is done.

    A non-finite loss is never saved; `nan_epoch` records the epoch where it appeared.
    """

    def __init__(self, folder: str, every_steps: int, extra_state=None, every_seconds: float = 0.0):
        super().__init__()
        self.folder, self.every_steps, self.extra_state = folder, every_steps, extra_state or dict
        self.every_seconds, self.saved_at = every_seconds, time.perf_counter()
        self.epoch = self.step = self.offset = 0
        self.nan_epoch = None

    def start_at(self, step: int) -> None:
        """The next `fit` call begins `step` steps into its first epoch (a resumed epoch)."""
        self.step = self.offset = step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last step this call trained (several with steps_per_execution), counted from the fit call's start.
        previous, self.step = self.step, self.offset + batch + 1
        due = (self.every_steps and self.step // self.every_steps > previous // self.every_steps) or (
            self.every_seconds and time.perf_counter() - self.saved_at >= self.every_seconds)
        if due and _finite((logs or {}).get("loss")):
            self._save(self.epoch, self.step)

    def on_epoch_end(self, epoch, logs=None):
        if _finite((logs or {}).get("loss")):
            self._save(epoch + 1, 0)
        else:
            self.nan_epoch = epoch
        self.step = self.offset = 0

    def _save(self, epoch: int, step: int) -> None:
        # The checkpoint before the newest one is kept, and named in state.json, so a newest one cut
        # short (a kill mid-write, a bad copy of the folder) still leaves a state to resume from.
        global_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"state-{global_step:09d}.weights.h5"
        path = os.path.join(self.folder, name)
        self.model.save_weights(path)
        try:
            previous = read_state(self.folder)
        except artifacts.StageError:
            previous = None
        state = {"epoch": epoch, "step": step, "global_step": global_step, "weights": name,
                 "weights_bytes": os.path.getsize(path), **self.extra_state()}
        if previous and previous["weights"] != name:
            state["previous"] = previous
        artifacts.write_json(os.path.join(self.folder, STATE), state)
        self.saved_at = time.perf_counter()
        for old in glob.glob(os.path.join(self.folder, "state-*.weights.h5")):
            if os.path.basename(old) not in (name, (previous or {}).get("weights")):
                os.remove(old)
