"""Training with seeds, per-epoch timing, and a backup from which an interrupted run resumes.

While a run trains, ``<run dir>/backup/`` holds Keras' BackupAndRestore
checkpoint (written after every epoch) and the per-epoch log. A rerun with the
same parameters resumes from the last finished epoch; a rerun with other
parameters starts afresh. The backup is removed once the run's metrics are saved.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from .files import write_atomic
from .pipeline import SplitPipelines
from .runs import backup_dir

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"]


def set_seeds(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TensorFlow's ops reproducible."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to each epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class RandomStateBackup(keras.callbacks.Callback):
    """Backs up the random generators' states (Dropout's), which BackupAndRestore does not restore.

    Without them a resumed run would draw other dropout masks than an uninterrupted one.
    Placed after BackupAndRestore: it saves after that callback and restores after it.
    """

    def __init__(self, path: Path, resumed_epoch: int):
        super().__init__()
        self.path = Path(path)
        self.resumed_epoch = resumed_epoch

    def _states(self):
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def on_train_begin(self, logs=None):
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: the run still resumes, with fresh masks
            return
        states = self._states()
        if saved["epoch"] == self.resumed_epoch and len(saved["states"]) == len(states):
            for variable, value in zip(states, saved["states"]):
                variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        states = [v.numpy().tolist() for v in self._states()]
        write_atomic(self.path, json.dumps({"epoch": epoch + 1, "states": states}))


def fit(model: keras.Model, pipelines: SplitPipelines, *, epochs: int, run_dir: Path, params: dict) -> pd.DataFrame:
    """Train to ``epochs`` (resuming a backup made with the same ``params``); the full per-epoch history."""
    backup = backup_dir(run_dir)
    identity = _backup_identity(params)
    _discard_backup_of_other_params(backup, identity)
    backup.mkdir(parents=True, exist_ok=True)
    (backup / "params.json").write_text(identity)
    log = backup / "history.csv"
    keras_backup = backup / "keras"
    # BackupAndRestore restores the weights, the optimizer and the epoch to start from; the data
    # pipeline starts at that epoch too, so the resumed run sees the batches of an uninterrupted one.
    first_epoch = min(resumed_epoch(keras_backup), epochs)
    callbacks = [
        EpochTimer(),  # before the logger, which writes the logs it adds
        keras.callbacks.CSVLogger(str(log), append=True),
        keras.callbacks.BackupAndRestore(str(keras_backup), double_checkpoint=True, delete_checkpoint=False),
        RandomStateBackup(backup / "random_state.json", first_epoch),
    ]
    model.fit(
        pipelines.training_epochs(first_epoch, epochs),
        validation_data=pipelines.batches("val"),
        epochs=epochs,
        steps_per_epoch=pipelines.steps_per_epoch,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles each epoch itself
        verbose=2,
    )
    return read_history(log)


def resumed_epoch(keras_backup: Path) -> int:
    """The epoch BackupAndRestore will resume from (0 without a backup)."""
    metadata = Path(keras_backup) / "training_metadata.json"
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def read_history(log: Path) -> pd.DataFrame:
    """The per-epoch log, one row per epoch: an epoch rerun after an interruption keeps its last row."""
    history = pd.read_csv(log)
    history = history.drop_duplicates("epoch", keep="last").sort_values("epoch", ignore_index=True)
    history["epoch"] += 1  # Keras counts from 0; the table and graphs count from 1
    return history[[column for column in HISTORY_COLUMNS if column in history.columns]]


def _backup_identity(params: dict) -> str:
    """What a backup must match to be resumed: every parameter but ``epochs`` (a run may be extended)."""
    return json.dumps({name: value for name, value in params.items() if name != "epochs"}, sort_keys=True)


def _discard_backup_of_other_params(backup: Path, identity: str) -> None:
    saved = backup / "params.json"
    if not backup.exists():
        return
    if saved.is_file() and saved.read_text() == identity:
        print(f"Resuming from the backup in {backup}")
        return
    print(f"Discarding the backup in {backup}: it belongs to a run with other parameters")
    shutil.rmtree(backup)
