"""The real-data spaces train under the official DRL data protocol: the CREMA-D frames a training batch carries are
the very frames the official loader gives (``code/dataset/av_dataset.py`` with ``mode='my_train'``, as
``code/ours.py`` line 354 builds its training set), with no crop or flip, unless ``data.augment`` is switched on.

The expected frames are computed here the official way, independently of ``drl_tune.data``: the official file name
rule, PIL and torchvision's ``Resize((224, 224))`` + ``ToTensor`` + ``Normalize``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from drl_tune.data import fixtures as fx
from drl_tune.data.prepare import main as prepare
from drl_tune.data.sources import official_frame_numbers
from drl_tune.study.spaces import load_space
from drl_tune.training.engine import Engine

# av_dataset.py lines 92-97: the transform every mode but 'train' gets
OFFICIAL_EVAL = transforms.Compose([
    transforms.Resize(size=(224, 224)),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])


def official_frames(folder: Path) -> torch.Tensor:
    """[2, 3, 224, 224]: what AVDataset_CD.__getitem__ returns as ``images`` outside mode 'train' (lines 99-114)."""
    file_num = len(os.listdir(folder))
    pick_num = 2
    seg = int(file_num / pick_num)
    images = []
    for i in range(pick_num):
        index = i * seg + int(seg / 2)
        path = str(folder) + "/frame_000" + str(index).zfill(2) + ".jpg"
        images.append(OFFICIAL_EVAL(Image.open(path).convert("RGB")).unsqueeze(0))
    return torch.cat(images)


@pytest.fixture(scope="module")
def cremad(tmp_path_factory):
    """The official layout (7 textured 48x36 frames per clip, numbered from 1: the official rule opens numbers 1 and
    4, evenly spaced centres would be the 2nd and 6th) and its split CSVs, prepared at the default 224²."""
    root = tmp_path_factory.mktemp("cremad_protocol")
    clips = fx.make_cremad_official(root / "src", per_class=3, n_frames=7, texture=True)
    by_emotion = {e: [c for c in clips if c[1] == e] for e in fx.CREMAD_EMOTIONS}
    for name, k in (("test", 0), ("val", 1), ("my_train", 2)):
        fx.write_csv(root / "splits" / f"{name}.csv", [by_emotion[e][k] for e in fx.CREMAD_EMOTIONS])
    assert prepare(["cremad", "--src", str(root / "src"), "--splits", str(root / "splits"), "--out",
                    str(root / "cache"), "--workers", "0", "--quiet"]) == 0
    return root


def engine_batches(space: str, root: Path, **overrides: object) -> list[tuple[str, np.ndarray, torch.Tensor]]:
    """The visual batches an Engine on ``space``'s configuration builds in one training epoch and one evaluation of
    val, as (split, sample indices, frames) — recorded where the engine makes them (``Engine._batch``)."""
    config = load_space(space).config({"data.root": str(root / "cache"), "model.width": 4, "threads": 1,
                                       "batch_size": 4, **overrides})
    engine = Engine(config)
    seen: list[tuple[str, np.ndarray, torch.Tensor]] = []
    make = engine._batch

    def record(split, indices, train, modalities=None):
        inputs, labels = make(split, indices, train, modalities)
        seen.append((split if not train else "train(training)", np.array(indices), inputs["visual"].clone()))
        return inputs, labels

    engine._batch = record  # type: ignore[method-assign]
    engine.method.training_step = lambda model, batch: None  # type: ignore[method-assign]  (no step needed)
    engine.train_epoch()
    engine._forward("val")
    return seen


def official_batch(root: Path, split_ids: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    return torch.stack([official_frames(root / "src" / "visual" / str(split_ids[i])) for i in indices])


@pytest.mark.parametrize("space", ["cremad", "cremad_compare"])
def test_space_defaults_train_on_the_official_loaders_frames_without_crop_or_flip(cremad, space):
    from drl_tune.data.cache import load_cache

    data = load_cache(cremad / "cache")
    assert load_space(space).config({"data.root": str(cremad / "cache")}).data.augment is False
    batches = engine_batches(space, cremad)
    trained = [b for b in batches if b[0] == "train(training)"]
    assert sum(len(i) for _, i, _ in trained) == len(data.splits["train"])  # the whole of my_train, once
    my_train = [line.split(",")[0] for line in (cremad / "splits" / "my_train.csv").read_text().split()]
    assert data.splits["train"].clip_ids.tolist() == my_train  # the training split is my_train.csv
    for split, indices, frames in batches:
        ids = data.splits["val" if split == "val" else "train"].clip_ids
        expected = official_batch(cremad, ids, indices)
        torch.testing.assert_close(frames, expected, atol=1e-5, rtol=0)


def test_augmentation_on_changes_the_training_frames_only(cremad):
    from drl_tune.data.cache import load_cache

    data = load_cache(cremad / "cache")
    batches = engine_batches("cremad", cremad, **{"data.augment": True})
    for split, indices, frames in batches:
        ids = data.splits["val" if split == "val" else "train"].clip_ids
        expected = official_batch(cremad, ids, indices)
        if split == "val":
            torch.testing.assert_close(frames, expected, atol=1e-5, rtol=0)
        else:  # every training frame cropped and/or flipped: none is the official frame
            differs = (frames - expected).abs().flatten(2).amax(2) > 0.1
            assert differs.all(), differs


def test_official_frame_rules():
    # DRL: i*seg + seg//2 (seg = F//2); OGM-GE: seg*i + 1 (seg = F//3 for its 3 frames)
    assert official_frame_numbers("drl", 7, 2) == [1, 4]
    assert official_frame_numbers("drl", 10, 2) == [2, 7]
    assert official_frame_numbers("ogm_ge", 10, 3) == [1, 4, 7]
    with pytest.raises(ValueError, match="unknown frame rule"):
        official_frame_numbers("nope", 10, 3)


@pytest.mark.parametrize("space", ["cremad", "cremad_compare"])
def test_dry_run_shows_the_protocol_and_where_it_comes_from(cremad, space, capsys):
    from drl_tune.run import main as run_main

    def dry_run(*extra: str) -> str:  # the command's main in this process (a subprocess adds only its imports)
        code = run_main(["--space", space, "--set", f"data.root={cremad / 'cache'}", "--dry-run", *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        return " ".join(out.split())  # the plan wraps long lines

    out = dry_run()
    assert "data protocol (every method alike" in out
    assert "data.augment = False: off: training reads my_train with the evaluation transform" in out
    assert "ours.py line 354" in out and "av_dataset.py lines 99-109" in out
    assert "CHANGED" not in out
    changed = dry_run("--set", "data.augment=true")
    assert "data.augment = True: CHANGED, a departure from the protocol's False" in changed


@pytest.mark.parametrize(("block", "message"), [
    ("protocol: {data.nosuch: from somewhere}", "'protocol.data.nosuch' names a config key the space does not set"),
    ("protocol: {frames: 3}", "'protocol.frames' must be a sentence"),
    ("protocol: [a, b]", "'protocol' must be a mapping"),
])
def test_a_bad_protocol_block_is_refused_naming_the_file(tmp_path, block, message):
    from drl_tune.study.params import SpaceError

    path = tmp_path / "mine.yaml"
    path.write_text(f"dataset: {{name: synthetic, augment: false}}\n{block}\n")
    with pytest.raises(SpaceError, match=message) as err:
        load_space(str(path))
    assert str(path) in str(err.value)
