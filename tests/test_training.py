import contextlib

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from covid_mobilenet.common.run_layout import TENSORBOARD_FOLDER, backup_dir, remove_backup
from covid_mobilenet.data.pipeline import SplitPipelines
from covid_mobilenet.model import training
from covid_mobilenet.model.architecture import build_model, compile_model


def run_folders(run_dir) -> dict:
    """Where a run in ``run_dir`` keeps its backup and its TensorBoard logs, as the run's steps pass them."""
    return {"backup": backup_dir(run_dir), "tensorboard": run_dir / TENSORBOARD_FOLDER}


def tiny_pipelines(seed=0) -> SplitPipelines:
    rng = np.random.default_rng(seed)
    subsets = {}
    for name in ("train", "val", "test"):
        images = rng.integers(0, 256, (24, 32, 32, 3)).astype("uint8")
        labels = rng.integers(0, 4, 24).astype("int32")
        subsets[name] = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    return SplitPipelines(subsets, {name: 24 for name in subsets}, batch_size=8, seed=seed)


def tiny_model(train_base=False):
    model = build_model(4, image_size=32, hidden_layers=1, dense_units=4, dropout=0.5, weights=None, train_base=train_base, seed=0)
    return compile_model(model, 1e-3)


PARAMS = {"experiment": "t", "seed": 1, "epochs": 1}


def fresh_model(train_base=False):
    training.set_seeds(1, deterministic=True)  # as a new process would, before building the model
    return tiny_model(train_base)


def small_model():
    """A model of seconds with the study's layer kinds (convolution, BatchNorm, Dense, Dropout, softmax)."""
    training.set_seeds(1, deterministic=True)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(keras.layers.ReLU()(x))
    x = keras.layers.Dropout(0.5, seed=2)(keras.layers.Dense(4, activation="relu")(x))
    return compile_model(keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x)), 1e-3)


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, capsys):
    """Trains: an interrupted and resumed fit against an uninterrupted one."""
    uninterrupted_model = fresh_model(train_base=True)
    uninterrupted = training.fit(uninterrupted_model, tiny_pipelines(), epochs=2, **run_folders(tmp_path / "a"), params=PARAMS)

    first = training.fit(fresh_model(train_base=True), tiny_pipelines(), epochs=1, **run_folders(tmp_path / "b"), params=PARAMS)
    assert (tmp_path / "b" / "backup" / "keras" / "latest.weights.h5").exists()
    resumed_model = fresh_model(train_base=True)  # a new process builds a fresh model; the backup brings back epoch 1
    resumed = training.fit(resumed_model, tiny_pipelines(), epochs=2, **run_folders(tmp_path / "b"), params={**PARAMS, "epochs": 2})
    assert "Resuming" in capsys.readouterr().out

    assert resumed["epoch"].tolist() == [1, 2]
    pd.testing.assert_series_equal(resumed.iloc[0], first.iloc[0], check_names=False)
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns])
    for expected, actual in zip(uninterrupted_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    assert (resumed["epoch_seconds"] > 0).all()
    remove_backup(tmp_path / "b")
    assert not (tmp_path / "b" / "backup").exists()


@pytest.mark.slow
def test_a_backup_of_other_parameters_is_discarded(tmp_path, capsys):
    """Trains: a backup is only made by fitting."""
    training.fit(fresh_model(), tiny_pipelines(), epochs=1, **run_folders(tmp_path), params=PARAMS)
    history = training.fit(fresh_model(), tiny_pipelines(), epochs=1, **run_folders(tmp_path), params={**PARAMS, "seed": 2})
    assert "Discarding the backup" in capsys.readouterr().out
    assert history["epoch"].tolist() == [1]


def test_history_keeps_the_last_row_of_a_rerun_epoch(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,accuracy,loss,val_accuracy,val_loss,epoch_seconds\n0,0.1,2,0.1,2,1\n1,0.2,1.5,0.2,1.5,1\n1,0.3,1.4,0.3,1.4,2\n")
    history = training.read_history(log)
    assert history["epoch"].tolist() == [1, 2]
    assert history["accuracy"].tolist() == [0.1, 0.3]
    assert list(history.columns) == training.HISTORY_COLUMNS


@pytest.mark.slow
def test_a_run_that_finished_training_but_not_its_outputs_trains_no_more(tmp_path, capsys):
    """Trains: the backup of a finished fit must restore its final weights."""
    model = fresh_model()
    first = training.fit(model, tiny_pipelines(), epochs=2, **run_folders(tmp_path), params=PARAMS)
    # killed after the last epoch, before metrics.json: the rerun restores the final weights and trains nothing
    again_model = fresh_model()
    again = training.fit(again_model, tiny_pipelines(), epochs=2, **run_folders(tmp_path), params=PARAMS)
    pd.testing.assert_frame_equal(again, first)
    for expected, actual in zip(model.get_weights(), again_model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def interrupted_while_saving_epoch_2(run_dir, garbage: bytes):
    """The files a kill leaves when it lands in BackupAndRestore's save after epoch 2."""
    keras_backup = run_dir / "backup" / "keras"
    for name in ("latest.weights.h5", "training_metadata.json"):
        (keras_backup / f"{name}.bkp").write_bytes((keras_backup / name).read_bytes())  # Keras copies these first
    (keras_backup / "latest.weights.h5").write_bytes(garbage)  # then is killed while writing the new weights


@pytest.mark.slow
def test_a_kill_while_the_backup_is_written_still_resumes_exactly(tmp_path, capsys):
    """Trains: a backup is only made by fitting, then damaged as a kill would."""
    uninterrupted_model = fresh_model()
    uninterrupted = training.fit(uninterrupted_model, tiny_pipelines(), epochs=2, **run_folders(tmp_path / "a"), params=PARAMS)

    training.fit(fresh_model(), tiny_pipelines(), epochs=1, **run_folders(tmp_path / "b"), params=PARAMS)
    weights = (tmp_path / "b" / "backup" / "keras" / "latest.weights.h5").read_bytes()
    interrupted_while_saving_epoch_2(tmp_path / "b", weights[: len(weights) // 3])
    resumed_model = fresh_model()
    resumed = training.fit(resumed_model, tiny_pipelines(), epochs=2, **run_folders(tmp_path / "b"), params=PARAMS)

    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns])
    for expected, actual in zip(uninterrupted_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.slow
def test_a_backup_cut_short_in_its_first_epoch_starts_over(tmp_path, capsys):
    """Trains: a backup is only made by fitting, then cut short."""
    training.fit(fresh_model(), tiny_pipelines(), epochs=1, **run_folders(tmp_path), params=PARAMS)
    (tmp_path / "backup" / "seal.json").unlink()  # killed before the first epoch was sealed
    (tmp_path / "backup" / "keras" / "latest.weights.h5").write_bytes(b"\x89HDF\r\n half")
    history = training.fit(fresh_model(), tiny_pipelines(), epochs=1, **run_folders(tmp_path), params=PARAMS)
    assert "cut short; training starts over" in capsys.readouterr().out
    assert history["epoch"].tolist() == [1]


@pytest.mark.slow
def test_backups_between_far_apart_epochs_are_skipped_and_a_kill_resumes_from_the_last_one(tmp_path, monkeypatch):
    """Trains: with backups at most every hour, a fit backs up after its first and last epochs only; killed in its
    third, it resumes from the first and still ends exactly where an uninterrupted fit does."""
    uninterrupted_model = fresh_model()
    uninterrupted = training.fit(uninterrupted_model, tiny_pipelines(), epochs=4, **run_folders(tmp_path / "a"), params=PARAMS)

    monkeypatch.setattr(training, "BACKUP_EVERY_SECONDS", 3600.0)
    saved = []
    original = keras.callbacks.BackupAndRestore._save_model
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_save_model",
                        lambda self: saved.append(self._current_epoch) or original(self))

    class Killed(Exception):
        pass

    class KilledInEpoch3(training.EpochTimer):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise Killed  # before the epoch is logged or backed up, as a kill would land
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(training, "EpochTimer", KilledInEpoch3)
    with pytest.raises(Killed):
        training.fit(fresh_model(), tiny_pipelines(), epochs=4, **run_folders(tmp_path / "b"), params=PARAMS)
    assert saved == [1], "the first epoch is backed up, the second (seconds later) is not"
    monkeypatch.setattr(training, "EpochTimer", training.EpochTimer.__mro__[1])
    resumed_model = fresh_model()
    resumed = training.fit(resumed_model, tiny_pipelines(), epochs=4, **run_folders(tmp_path / "b"), params=PARAMS)
    assert saved == [1, 2, 4], "resumed from epoch 1: its first epoch (2) and its last are backed up"
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns])
    for expected, actual in zip(uninterrupted_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def test_the_training_step_is_traced_once_and_trains_as_keras_alone_would(tmp_path, monkeypatch):
    """build_training_state makes fit's variables before fit: one trace of the training step instead of two (a
    function that creates variables is traced twice), and the same weights as Keras building them itself. On a small
    model with the study's layer kinds (the tracing does not depend on MobileNet's size, the test's time does)."""
    def traced_fit(folder):
        model, traces = small_model(), []
        train_step = model.train_step
        model.train_step = lambda data: traces.append(1) or train_step(data)  # runs once per trace, not per batch
        training.fit(model, tiny_pipelines(), epochs=2, **run_folders(folder), params={**PARAMS, "epochs": 2})
        return model, len(traces)

    built, built_traces = traced_fit(tmp_path / "built")
    monkeypatch.setattr(training, "build_training_state", lambda model: None)
    keras_alone, keras_traces = traced_fit(tmp_path / "keras")
    assert (built_traces, keras_traces) == (1, 2)
    for ours, theirs in zip(built.get_weights(), keras_alone.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_the_per_epoch_tensorboard_skips_keras_per_batch_calls_and_writes_the_same_scalars(tmp_path, monkeypatch):
    """Keras 3 calls summary.scalar after every batch even when it writes per epoch; fit's callback does not, and its
    TensorBoard record holds the same per-epoch scalars as with Keras's own callback."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    after_batch = []
    keras_method = keras.callbacks.TensorBoard.on_train_batch_end
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_train_batch_end",
                        lambda self, batch, logs=None: after_batch.append(batch) or keras_method(self, batch, logs))

    def recorded(folder):
        record = {}
        for run in ("train", "validation"):
            events = EventAccumulator(str(folder / TENSORBOARD_FOLDER / run), size_guidance={"tensors": 0})
            events.Reload()
            record[run] = {tag: len(events.Tensors(tag)) for tag in events.Tags()["tensors"]}
        return record

    training.fit(small_model(), tiny_pipelines(), epochs=2, **run_folders(tmp_path / "ours"), params={**PARAMS, "epochs": 2})
    assert after_batch == [], "no per-batch call when writing per epoch"
    monkeypatch.setattr(training, "EpochTensorBoard", keras.callbacks.TensorBoard)
    training.fit(small_model(), tiny_pipelines(), epochs=2, **run_folders(tmp_path / "keras"), params={**PARAMS, "epochs": 2})
    assert len(after_batch) == 2, "Keras's callback: one call per call of the training function, one per epoch"
    assert recorded(tmp_path / "ours") == recorded(tmp_path / "keras")
    assert recorded(tmp_path / "ours")["train"]["epoch_loss"] == 2
    # with something to write per batch, Keras's own method runs
    callback = training.EpochTensorBoard(str(tmp_path / "batch"), update_freq="epoch", write_steps_per_second=True)
    callback.set_model(small_model())
    after_batch.clear()
    callback.on_train_begin()
    callback.on_train_batch_begin(0)
    callback.on_train_batch_end(0, {"loss": 1.0})
    callback.on_train_end()
    assert after_batch == [0]


def test_each_epoch_runs_in_one_call_and_trains_exactly_as_one_call_per_batch(tmp_path, monkeypatch):
    """fit hands Keras an epoch's steps at once (steps_per_execution): one call of the training function per epoch,
    the same weights and per-epoch logs as one call per batch, and the model back to one step per call afterwards."""
    def counted_fit(folder):
        model, calls = small_model(), []
        make = model.make_train_function

        def counting(force=False):
            make(force)
            function = model.train_function
            model.train_function = lambda iterator: calls.append(1) or function(iterator)
            return model.train_function

        model.make_train_function = counting
        history = training.fit(model, tiny_pipelines(), epochs=3, **run_folders(folder), params={**PARAMS, "epochs": 3})
        return model, history.drop(columns="epoch_seconds"), len(calls)

    per_epoch, per_epoch_history, per_epoch_calls = counted_fit(tmp_path / "epoch")
    assert per_epoch.steps_per_execution == 1 and per_epoch.train_function is None
    monkeypatch.setattr(training, "one_call_per_epoch", lambda model, steps: contextlib.nullcontext())
    per_batch, per_batch_history, per_batch_calls = counted_fit(tmp_path / "batch")
    assert (per_epoch_calls, per_batch_calls) == (3, 3 * 3)  # 3 epochs of 3 batches of 8
    pd.testing.assert_frame_equal(per_epoch_history, per_batch_history)
    for ours, theirs in zip(per_epoch.get_weights(), per_batch.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
