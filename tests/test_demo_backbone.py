"""The demo's pretrained backbone: built once, reused, rebuilt when what made it changes or it is damaged."""
import json
import shutil
import subprocess

import numpy as np
import pytest

from covid_mobilenet.common.files import file_sha256, write_json
from covid_mobilenet.data.pretext import PRETEXT_ATTRIBUTES, pretext_set
from covid_mobilenet.model import demo_backbone
from covid_mobilenet.model.architecture import build_backbone

REAL_RUN = subprocess.run  # demo_backbone.subprocess is this module: patching it patches subprocess.run everywhere
RECIPE = {"images": 96, "epochs": 1, "batch_size": 32, "learning_rate": 0.003, "seed": 0}


class CountingRun:
    """Stands in for subprocess.run: counts pretraining commands and runs them for real."""

    def __init__(self):
        self.commands = []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        return REAL_RUN(command, **kwargs)


@pytest.fixture
def counting(monkeypatch):
    run = CountingRun()
    monkeypatch.setattr(demo_backbone.subprocess, "run", run)
    return run


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One backbone pretrained for this module: (cache folder, the pretraining's messages, the commands run)."""
    cache, said, counted = tmp_path_factory.mktemp("backbone"), [], CountingRun()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_backbone.subprocess, "run", counted)
        demo_backbone.ensure_backbone(RECIPE, 32, cache, say=said.append)
    return cache, said, counted.commands


@pytest.mark.slow
def test_the_backbone_is_pretrained_once_then_reused_and_loads_into_mobilenet(pretrained, tmp_path, counting):
    """Trains: pretraining is what it checks (the module's one pretraining)."""
    cache, said, commands = pretrained
    first = demo_backbone.weights_path(RECIPE, 32, cache)
    assert len(commands) == 1 and any("Pretraining the demo backbone" in line for line in said)
    manifest = json.loads(demo_backbone.manifest_path(first).read_text())
    assert manifest["image_size"] == 32 and "not ImageNet" in manifest["what"]
    assert 0 <= manifest["held_out_binary_accuracy"] <= 1 and manifest["seconds"] > 0
    stamp = first.stat().st_mtime_ns
    said.clear()
    again = demo_backbone.ensure_backbone(RECIPE, 32, cache, say=said.append)
    assert again == first and first.stat().st_mtime_ns == stamp
    assert counting.commands == [] and said == []
    # the notebook loads it through the ordinary weights=<file> path
    loaded = build_backbone(32, str(first))
    assert loaded.get_layer("conv1").get_weights()[0].std() > 0


@pytest.mark.slow
def test_a_damaged_cached_file_is_rebuilt_with_a_message(pretrained, tmp_path, counting):
    """Trains: the rebuild is a second pretraining, of a copy of the module's backbone damaged on purpose."""
    shutil.copytree(pretrained[0], tmp_path, dirs_exist_ok=True)
    weights = demo_backbone.weights_path(RECIPE, 32, tmp_path)
    assert demo_backbone.is_complete(weights)
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\0" * 64)
    said = []
    rebuilt = demo_backbone.ensure_backbone(RECIPE, 32, tmp_path, say=said.append)
    assert rebuilt == weights and demo_backbone.is_complete(weights)
    assert len(counting.commands) == 1
    assert any("damaged or incomplete" in line and str(weights) in line for line in said)
    build_backbone(32, str(weights))  # loads again


def test_a_missing_manifest_counts_as_incomplete(tmp_path):
    weights = demo_backbone.weights_path(RECIPE, 32, tmp_path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"half a file")
    assert not demo_backbone.is_complete(weights)


def test_another_image_size_setting_or_generator_makes_another_file(tmp_path, monkeypatch):
    base = demo_backbone.weights_path(RECIPE, 32, tmp_path)
    assert demo_backbone.weights_path(RECIPE, 48, tmp_path) != base
    assert demo_backbone.weights_path({**RECIPE, "epochs": 2}, 32, tmp_path) != base
    assert demo_backbone.weights_path({**RECIPE, "seed": 1}, 32, tmp_path) != base
    assert demo_backbone.weights_path(dict(reversed(list(RECIPE.items()))), 32, tmp_path) == base
    generator = tmp_path / "pretext.py"
    recipe = demo_backbone.recipe_files()
    assert [file.name for file in recipe] == ["pretext.py", "pretrain.py", "demo_backbone.py"]
    shutil.copyfile(recipe[0], generator)
    monkeypatch.setattr(demo_backbone, "recipe_files", lambda: [generator, *recipe[1:]])
    assert demo_backbone.weights_path(RECIPE, 32, tmp_path) == base
    generator.write_text(generator.read_text().replace("rng.integers(4, 10)", "rng.integers(3, 10)"))
    assert demo_backbone.weights_path(RECIPE, 32, tmp_path) != base


def test_a_changed_image_size_pretrains_a_new_backbone(tmp_path, monkeypatch):
    commands = []

    def fake_pretraining(command, **kwargs):  # records what would be trained, writes a file that passes the check
        commands.append(command)
        out = demo_backbone.Path(command[command.index("--out") + 1])
        out.write_bytes(b"weights")
        write_json(demo_backbone.manifest_path(out), {"weights_sha256": file_sha256(out)})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(demo_backbone.subprocess, "run", fake_pretraining)
    demo_backbone.ensure_backbone(RECIPE, 32, tmp_path, say=lambda line: None)
    demo_backbone.ensure_backbone(RECIPE, 32, tmp_path, say=lambda line: None)
    demo_backbone.ensure_backbone(RECIPE, 40, tmp_path, say=lambda line: None)
    assert [command[command.index("--image-size") + 1] for command in commands] == ["32", "40"]


def test_a_failed_pretraining_is_an_error_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_backbone.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1))
    with pytest.raises(demo_backbone.BackboneError, match="exit status 1"):
        demo_backbone.ensure_backbone(RECIPE, 32, tmp_path, say=lambda line: None)


def test_the_pretext_set_is_deterministic_and_has_every_attribute():
    pictures, attributes = pretext_set(200, 32, seed=3)
    again, _ = pretext_set(200, 32, seed=3)
    other, _ = pretext_set(200, 32, seed=4)
    assert pictures.shape == (200, 32, 32, 3) and pictures.dtype == np.uint8
    assert attributes.shape == (200, len(PRETEXT_ATTRIBUTES))
    assert np.array_equal(pictures, again) and not np.array_equal(pictures, other)
    shares = attributes.mean(axis=0)
    assert ((shares > 0.1) & (shares < 0.9)).all(), dict(zip(PRETEXT_ATTRIBUTES, shares))
    assert not (attributes[:, 0] * attributes[:, 1]).any(), "one ellipse and two ellipses exclude each other"
