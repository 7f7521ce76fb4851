"""Training with seeds, per-epoch timing, and a backup from which an interrupted run resumes.

While a run trains, its ``backup`` folder holds Keras' BackupAndRestore
checkpoint and the per-epoch log. The checkpoint is written after the first
epoch, the last, and any epoch that ends at least ``BACKUP_EVERY_SECONDS`` after
the previous checkpoint: after every epoch of fine-tuning, every few dozen of a
head trained on cached features (whose epochs take a fraction of a second, less
than the checkpoint itself). A rerun with the same parameters resumes from the
last checkpoint and ends exactly as an uninterrupted run, since each epoch's
batches and random states depend only on the seed and the epoch; a rerun with
other parameters starts afresh. The backup is removed once the run's metrics are
saved.
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from ..common.files import file_sha256, write_atomic
from ..data.pipeline import SplitPipelines

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"]
BACKUP_EVERY_SECONDS = 10.0  # a kill loses at most this much training (and the epoch it lands in)


def set_seeds(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TensorFlow's ops reproducible."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def build_training_state(model: keras.Model) -> None:
    """Create the optimizer's slots and the compiled loss's and metrics' variables now, eagerly, on one blank input.

    Under the default distribution strategy Keras creates them while it traces the training step, and TensorFlow
    traces a function that creates variables twice: about 5 s of every run on the CPU, whatever its size (a
    2-epoch run at 32 px: 11.8 s of fit against 6.9 s). Nothing trains and no random state moves: the model is
    called in inference mode, and the metrics it fed are reset; fit would build the same variables, zeros alike."""
    with model.distribute_strategy.scope():
        inputs = keras.ops.zeros((1, *model.input_shape[1:]), dtype=model.inputs[0].dtype)
        labels = keras.ops.zeros((1,), dtype="int32")
        outputs = model(inputs, training=False)
        model.compute_loss(inputs, labels, outputs, training=False)
        model.compute_metrics(inputs, labels, outputs, sample_weight=None)
        model.reset_metrics()
        model.optimizer.build(model.trainable_variables)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to each epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class BackupSeal(keras.callbacks.Callback):
    """Seals each epoch's backup: its epoch, the SHA-256 of Keras' weights file, and the random
    generators' states (Dropout's), which BackupAndRestore does not save.

    Placed after BackupAndRestore, so it writes once that callback's files are complete. A backup
    whose files do not match the seal was cut short by a kill; ``prepare_resume`` repairs it.
    """

    def __init__(self, keras_backup: Path, seal: Path, restore_states: list | None):
        super().__init__()
        self.keras_backup, self.seal, self.restore_states = Path(keras_backup), Path(seal), restore_states

    def _states(self):
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def on_train_begin(self, logs=None):
        states = self._states()
        if self.restore_states is not None and len(self.restore_states) == len(states):
            for variable, value in zip(states, self.restore_states):
                variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        record = {
            "epoch": epoch + 1,
            "weights_sha256": file_sha256(self.keras_backup / KERAS_WEIGHTS),
            "random_states": [v.numpy().tolist() for v in self._states()],
        }
        write_atomic(self.seal, json.dumps(record))


class ThrottledBackup(keras.callbacks.Callback):
    """Keras' BackupAndRestore and its seal, written after the first epoch of this fit, the last one, and any epoch
    that ends ``every_seconds`` or more after the previous backup; restored at the start as BackupAndRestore does."""

    def __init__(self, backup: keras.callbacks.BackupAndRestore, seal: BackupSeal, epochs: int, every_seconds: float):
        super().__init__()
        self.backup, self.seal, self.epochs, self.every_seconds = backup, seal, epochs, every_seconds
        self._last: float | None = None

    def set_model(self, model):
        super().set_model(model)
        self.backup.set_model(model)
        self.seal.set_model(model)

    def on_train_begin(self, logs=None):
        self.backup.on_train_begin(logs)
        self.seal.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if self._last is None or epoch + 1 >= self.epochs or now - self._last >= self.every_seconds:
            self.backup.on_epoch_end(epoch, logs)
            self.seal.on_epoch_end(epoch, logs)
            self._last = time.perf_counter()

    def on_train_end(self, logs=None):
        self.backup.on_train_end(logs)


KERAS_WEIGHTS = "latest.weights.h5"  # BackupAndRestore's file names
KERAS_METADATA = "training_metadata.json"


def prepare_resume(keras_backup: Path, seal: Path) -> tuple[int, list | None]:
    """(epoch to resume from, random states) after making Keras' backup consistent with its seal.

    A kill can land while BackupAndRestore writes its weights or metadata. When the latest files
    do not match the seal, its previous copies (.bkp, made just before) do, and are put back; when
    neither matches, the backup is dropped and training starts over. Either way the run resumes
    exactly where an uninterrupted one would be.
    """
    try:
        record = json.loads(Path(seal).read_text())
    except (OSError, ValueError):
        record = None
    for suffix in ("", ".bkp"):
        weights = keras_backup / f"{KERAS_WEIGHTS}{suffix}"
        metadata = keras_backup / f"{KERAS_METADATA}{suffix}"
        if record and weights.is_file() and resumed_epoch(metadata) == record["epoch"] and file_sha256(weights) == record["weights_sha256"]:
            if suffix:
                shutil.copyfile(weights, keras_backup / KERAS_WEIGHTS)
                shutil.copyfile(metadata, keras_backup / KERAS_METADATA)
            return record["epoch"], record["random_states"]
    if keras_backup.exists():
        print(f"The backup in {keras_backup} was cut short; training starts over")
        shutil.rmtree(keras_backup)
    return 0, None


def fit(model: keras.Model, pipelines: SplitPipelines, *, epochs: int, backup: Path, tensorboard: Path,
        params: dict) -> pd.DataFrame:
    """Train to ``epochs`` (resuming the backup in ``backup`` when it was made with the same ``params``); the full
    per-epoch history. Per-epoch scalars go to ``tensorboard``."""
    backup = Path(backup)
    identity = _backup_identity(params)
    _discard_backup_of_other_params(backup, identity)
    backup.mkdir(parents=True, exist_ok=True)
    write_atomic(backup / "params.json", identity)
    log = backup / "history.csv"
    keras_backup, seal = backup / "keras", backup / "seal.json"
    # BackupAndRestore restores the weights, the optimizer and the epoch to start from; the data
    # pipeline starts at that epoch too, so the resumed run sees the batches of an uninterrupted one.
    first_epoch, random_states = prepare_resume(keras_backup, seal)
    first_epoch = min(first_epoch, epochs)
    if not model.optimizer.built:
        build_training_state(model)
    callbacks = [
        EpochTimer(),  # before the logger, which writes the logs it adds
        keras.callbacks.CSVLogger(str(log), append=True),
        ThrottledBackup(keras.callbacks.BackupAndRestore(str(keras_backup), double_checkpoint=True, delete_checkpoint=False),
                        BackupSeal(keras_backup, seal, random_states), epochs, BACKUP_EVERY_SECONDS),
        # per-epoch scalars for `tensorboard --logdir results`, which compares every run side by side
        EpochTensorBoard(str(tensorboard), write_graph=False, update_freq="epoch"),
    ]
    with one_call_per_epoch(model, pipelines.steps_per_epoch):
        model.fit(
            pipelines.training_epochs(first_epoch, epochs),
            validation_data=pipelines.batches("val", model.distribute_strategy.num_replicas_in_sync),
            epochs=epochs,
            steps_per_epoch=pipelines.steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles each epoch itself
            verbose=2,
        )
    return read_history(log)


@contextmanager
def one_call_per_epoch(model: keras.Model, steps_per_epoch: int):
    """Keras runs each epoch's steps in one call of its training function (``steps_per_execution``), not one call per
    batch from Python: the same steps in the same order, so the same weights, without Keras's per-batch work (a head
    on cached features spends more time there than in its batches). The callbacks act per epoch. Afterwards the
    model runs one step per call again, so predict and evaluate see it as compiled. Under a strategy of several
    replicas, one step per call as before."""
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # Keras 3.15's multi-step loop fails on MirroredStrategy's iterator ("Placeholder"): one step per call there
        yield
        return
    compiled = model.steps_per_execution
    model.steps_per_execution = max(1, int(steps_per_epoch))
    model.train_function = model.test_function = None  # built again, for the steps per call they are used with
    try:
        yield
    finally:
        model.steps_per_execution = compiled
        model.train_function = model.test_function = None


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback without its calls after every batch when it writes per epoch.

    With ``update_freq="epoch"``, Keras 3 still calls ``summary.scalar`` for each batch's logs, and records nothing (no
    writer is the default then). That cost 1.5 s of every 100 epochs of a head trained on cached features, whose epochs
    take a tenth of a second. With a graph to write, steps per second or a profile to take, Keras's own method runs."""

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch" and not any(
            getattr(self, flag, True) for flag in ("write_steps_per_second", "_should_trace", "_should_write_train_graph")
        ):
            return
        super().on_train_batch_end(batch, logs)


def resumed_epoch(metadata: Path) -> int:
    """The epoch a BackupAndRestore metadata file says to resume from (0 without one)."""
    try:
        return int(json.loads(Path(metadata).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
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
