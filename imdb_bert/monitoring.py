"""Seeing what a stage is doing: progress bars, TensorBoard logs, and the training curves PNG.

Progress bars (tqdm) show only on a terminal, so logs of CI runs and notebooks stay one line per
event; Keras' own per-epoch progress bar follows the same rule (`fit_verbosity`).
"""

from __future__ import annotations

import os
import sys
import time

import keras

from imdb_bert import private_apis

TENSORBOARD_DIR = "logs"
CURVES_PNG = "curves.png"


def progress(iterable, description: str, total: int | None = None, unit: str = "review"):
    """`iterable`, with a progress bar on stderr when it is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, unit=unit, disable=None, leave=False,
                mininterval=0.5)


def fit_verbosity() -> int:
    """Keras `fit` verbosity: a live progress bar on a terminal, one line per epoch elsewhere."""
    return 1 if sys.stdout.isatty() else 2


def training_callbacks(folder: str, tokens_per_step: float) -> list:
    """Callbacks that add the learning rate and training throughput to each epoch's logs and write
    all logged values as TensorBoard events under `folder/logs` (`tensorboard --logdir runs`).
    Put them before the CSV logger, so history.csv carries the same values."""
    return [TrainingRate(tokens_per_step),
            private_apis.tensorboard_naming_dev(os.path.join(folder, TENSORBOARD_DIR), write_graph=False,
                                                update_freq="epoch", profile_batch=0)]


def dev_named(logs: dict) -> dict:
    """Keras names what it measures on `validation_data` `val_*`; ours is the dev split, so history.csv
    says `dev_*` (the held-out split, which the project calls validation, is scored only at the end)."""
    return {("dev_" + key[4:] if key.startswith("val_") else key): value for key, value in logs.items()}


class HistoryLogger(keras.callbacks.Callback):
    """history.csv: one row per epoch of everything logged, the dev split's figures as `dev_*`, appended
    to the file a resumed run already has (its header kept). Keras' CSVLogger would name them `val_*`
    (and, given other names, adds `val_` columns of its own)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        import csv

        row = {"epoch": epoch, **dev_named(logs or {})}
        header = None
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), None)
        with open(self.path, "a", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, header or ["epoch"] + sorted(key for key in row if key != "epoch"),
                                    restval="NA", extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerow({key: float(value) if hasattr(value, "__float__") and key != "epoch" else value
                             for key, value in row.items()})


class TrainingRate(keras.callbacks.Callback):
    """Adds `learning_rate` (at the epoch's end) and `tokens_per_second` (word pieces trained on per
    second of training steps, validation excluded) to each epoch's logs."""

    def __init__(self, tokens_per_step: float):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.steps, self.started, self.last_step_done = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.steps, self.started = 0, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps = batch + 1   # the last step of the call (several with steps_per_execution)
        self.last_step_done = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        seconds = self.last_step_done - self.started
        if self.steps and seconds > 0:
            logs["tokens_per_second"] = self.steps * self.tokens_per_step / seconds


DEV_CURVE_LABEL = "dev (per-epoch choices; not the held-out reviews)"


def dev_value(row: dict, key: str) -> str:
    """A dev figure of a history.csv row: `dev_<key>`, or `val_<key>` in a run written before the rename."""
    return row.get("dev_" + key, row.get("val_" + key))


def save_curves(history_rows: list[dict], path: str, title: str) -> None:
    """A PNG of the training and dev loss and masked accuracy (and the learning rate) per epoch, from
    the rows of history.csv. Keras names the dev figures `val_*` (its validation_data is the dev split);
    the held-out split is scored only at the end, so it has no curve."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) + 1 for row in history_rows]
    panels = [("masked-token cross-entropy", "loss"), ("masked-token accuracy", "masked_accuracy")]
    has_rate = all(row.get("learning_rate") not in (None, "") for row in history_rows)
    figure, axes = plt.subplots(1, len(panels) + has_rate, figsize=(5 * (len(panels) + has_rate), 3.6))
    for axis, (label, key) in zip(axes, panels):
        axis.plot(epochs, [float(row[key]) for row in history_rows], "o-", label="training")
        axis.plot(epochs, [float(dev_value(row, key)) for row in history_rows], "s-", label=DEV_CURVE_LABEL)
        axis.set(xlabel="epoch", title=label)
        axis.grid(alpha=0.3)
        axis.legend()
    if has_rate:
        axes[-1].plot(epochs, [float(row["learning_rate"]) for row in history_rows], "o-", color="gray")
        axes[-1].set(xlabel="epoch", title="learning rate (epoch end)")
        axes[-1].grid(alpha=0.3)
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
