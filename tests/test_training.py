import numpy as np
import pandas as pd
import tensorflow as tf

from covid_mobilenet import training
from covid_mobilenet.runs import remove_backup
from covid_mobilenet.model import build_model, compile_model


def tiny_data(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (24, 32, 32, 3)).astype("uint8")
    labels = rng.integers(0, 4, 24).astype("int32")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def tiny_model():
    model = build_model(4, image_size=32, hidden_layers=1, dense_units=4, dropout=0.0, weights=None, train_base=False)
    return compile_model(model, 1e-3)


PARAMS = {"experiment": "t", "seed": 1, "epochs": 1}


def test_an_interrupted_run_resumes_from_its_last_finished_epoch(tmp_path, capsys):
    training.set_seeds(1, deterministic=True)
    first = training.fit(tiny_model(), tiny_data(), tiny_data(1), epochs=1, run_dir=tmp_path, params=PARAMS)
    assert (tmp_path / "backup" / "keras" / "latest.weights.h5").exists()
    # a new process would build a fresh model; the backup brings back epoch 1
    resumed = training.fit(tiny_model(), tiny_data(), tiny_data(1), epochs=3, run_dir=tmp_path, params={**PARAMS, "epochs": 3})
    assert "Resuming" in capsys.readouterr().out
    assert resumed["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_series_equal(resumed.iloc[0], first.iloc[0], check_names=False)
    assert (resumed["epoch_seconds"] > 0).all()
    remove_backup(tmp_path)
    assert not (tmp_path / "backup").exists()


def test_a_backup_of_other_parameters_is_discarded(tmp_path, capsys):
    training.fit(tiny_model(), tiny_data(), tiny_data(1), epochs=1, run_dir=tmp_path, params=PARAMS)
    history = training.fit(tiny_model(), tiny_data(), tiny_data(1), epochs=1, run_dir=tmp_path, params={**PARAMS, "seed": 2})
    assert "Discarding the backup" in capsys.readouterr().out
    assert history["epoch"].tolist() == [1]


def test_history_keeps_the_last_row_of_a_rerun_epoch(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,accuracy,loss,val_accuracy,val_loss,epoch_seconds\n0,0.1,2,0.1,2,1\n1,0.2,1.5,0.2,1.5,1\n1,0.3,1.4,0.3,1.4,2\n")
    history = training.read_history(log)
    assert history["epoch"].tolist() == [1, 2]
    assert history["accuracy"].tolist() == [0.1, 0.3]
    assert list(history.columns) == training.HISTORY_COLUMNS
