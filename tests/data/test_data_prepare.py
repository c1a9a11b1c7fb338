"""prepare → load on tiny generated datasets in every raw layout: shapes, labels, class order, splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drl_tune.data import fixtures as fx
from drl_tune.data import load_dataset
from drl_tune.data.cache import load_cache
from drl_tune.data.config import DataConfig
from drl_tune.data.prepare import main as prepare

CREMAD_CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def run(*argv: str) -> None:
    assert prepare([*argv, "--workers", "0", "--quiet"]) == 0


def check_frames(frames: np.ndarray, labels: np.ndarray, indices: list[int], tol: float) -> None:
    """Red channel = the clip's class colour, green = the index of the source frame that was picked."""
    for clip, label in zip(frames, labels, strict=True):
        for t, index in enumerate(indices):
            r, g, _ = frame_means(clip[t])
            expected_r, expected_g, _ = fx.frame_colour(int(label), index)
            assert abs(r - expected_r) < tol and abs(g - expected_g) < tol, (label, t, r, g)


def frame_means(frame: np.ndarray) -> tuple[float, float, float]:
    inner = frame[:, 4:-4, 4:-4].astype(np.float64)  # borders carry resampling / chroma bleed
    return tuple(inner.reshape(3, -1).mean(1))


def tone_peaks(audio: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Mel bin of each class's tone (the fixture's pitch rises with the label)."""
    return {int(y): int(a[:10].astype(np.float32).mean(0).argmax()) for a, y in zip(audio, labels, strict=True)}


# -- CREMA-D -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cremad_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad_raw")
    fx.make_cremad_raw(root, per_class=10, n_frames=6)
    return root


def test_cremad_raw_corpus_stratified_official_proportions(cremad_raw, tmp_path):
    run("cremad", "--src", str(cremad_raw), "--out", str(tmp_path / "c"), "--size", "32")
    data = load_cache(tmp_path / "c")
    assert data.name == "cremad" and data.classes == CREMAD_CLASSES  # sorted, as DRL's sorted(stat.csv)
    assert data.modalities == {"audio": "spectrogram", "visual": "frames"}
    # 60 clips in the official 5954/744/744 proportions: 6 + 6 held out, one clip per class in each
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 48, "val": 6, "test": 6}
    for split in ("val", "test"):
        assert sorted(data.splits[split].labels.tolist()) == list(range(6))
    ids = [set(d.clip_ids.tolist()) for d in data.splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    train = data.splits["train"]
    assert train.inputs["audio"].shape == (48, 300, 128) and train.inputs["audio"].dtype == np.float16
    assert train.inputs["visual"].shape == (48, 2, 3, 32, 32) and train.inputs["visual"].dtype == np.uint8
    assert isinstance(train.inputs["visual"], np.memmap)  # read-only memory map, shared via the page cache
    assert not train.inputs["visual"].flags.writeable
    # the label of every clip is the emotion in its name, and its data is that clip's
    for split in data.splits.values():
        for clip, label in zip(split.clip_ids, split.labels, strict=True):
            assert CREMAD_CLASSES[label] == clip.split("_")[2]
        check_frames(split.inputs["visual"], split.labels, [1, 4], tol=10)  # 6 frames → centres of 2 halves
    peaks = tone_peaks(train.inputs["audio"], train.labels)  # the fixture's pitch rises with the label
    assert [peaks[y] for y in range(6)] == sorted(set(peaks.values()))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["preprocessing"]["audio"]["n_mels"] == 128
    assert manifest["preprocessing"]["source_aspect"] == pytest.approx(48 / 36)


def test_cremad_generated_split_is_deterministic_and_seeded(cremad_raw, tmp_path):
    run("cremad", "--src", str(cremad_raw), "--out", str(tmp_path / "a"), "--size", "16", "--audio-frames", "20")
    run("cremad", "--src", str(cremad_raw), "--out", str(tmp_path / "b"), "--size", "16", "--audio-frames", "20")
    run("cremad", "--src", str(cremad_raw), "--out", str(tmp_path / "c"), "--size", "16", "--audio-frames", "20",
        "--seed", "1")
    a, b, c = (load_cache(tmp_path / n) for n in "abc")
    for split in ("train", "val", "test"):
        assert a.splits[split].clip_ids.tolist() == b.splits[split].clip_ids.tolist()
        np.testing.assert_array_equal(a.splits[split].inputs["visual"], b.splits[split].inputs["visual"])
    assert a.splits["test"].clip_ids.tolist() != c.splits["test"].clip_ids.tolist()


def _official(root: Path, per_class: int = 3, **kw) -> list[tuple[str, str]]:
    return fx.make_cremad_official(root, per_class=per_class, **kw)


@pytest.mark.parametrize("variant", ["my_train", "train_includes_val"])
def test_cremad_official_layout_and_split_csvs_with_bom_crlf_header(variant, tmp_path):
    clips = _official(tmp_path / "src", per_class=3, n_frames=4)
    by_index = {e: [c for c in clips if c[1] == e] for e in fx.CREMAD_EMOTIONS}
    test = [by_index[e][0] for e in fx.CREMAD_EMOTIONS]
    val = [by_index[e][1] for e in fx.CREMAD_EMOTIONS]
    train = [by_index[e][2] for e in fx.CREMAD_EMOTIONS]
    splits = tmp_path / "splits"
    # the published files: stat.csv with BOM + CRLF, train.csv with header + CRLF, val.csv plain, test.csv header
    fx.write_csv(splits / "stat.csv", [[e] for e in fx.CREMAD_EMOTIONS], bom=True, crlf=True)
    if variant == "my_train":
        fx.write_csv(splits / "my_train.csv", train)
    else:  # the official train.csv = my_train.csv + val.csv
        fx.write_csv(splits / "train.csv", train + val, bom=True, crlf=True, header=True)
    fx.write_csv(splits / "val.csv", val)
    fx.write_csv(splits / "test.csv", test, crlf=True, header=True)
    run("cremad", "--src", str(tmp_path / "src"), "--splits", str(splits), "--out", str(tmp_path / "c"))
    data = load_cache(tmp_path / "c")
    assert data.classes == CREMAD_CLASSES
    for name, rows in (("train", train), ("val", val), ("test", test)):
        split = data.splits[name]
        assert split.clip_ids.tolist() == [c for c, _ in rows]  # the CSV's order
        assert [data.classes[y] for y in split.labels] == [e for _, e in rows]
        assert split.inputs["visual"].shape == (6, 2, 3, 224, 224)  # default: the training resolution
        # 4 frames numbered 1-4: the official loader opens numbers i*seg + seg//2 = 1 and 3 (1st and 3rd)
        check_frames(split.inputs["visual"], split.labels, [0, 2], tol=6)
        # the official .pt fbank is stored as is (value = label), zero-padded from 50 to 300 frames
        audio = split.inputs["audio"].astype(np.float32)
        assert audio.shape == (6, 300, 128)
        np.testing.assert_array_equal(audio[:, :50, 0], np.repeat(split.labels[:, None], 50, 1))
        assert not audio[:, 50:].any()
    assert data.preprocessing["audio"]["source"] == "pt"


def test_cremad_official_layout_without_val_csv_carves_validation(tmp_path):
    clips = _official(tmp_path / "src", per_class=10, n_frames=2, audio="wav")
    test = clips[::10]
    train = [c for c in clips if c not in test]
    fx.write_csv(tmp_path / "splits" / "train.csv", train, header=True)
    fx.write_csv(tmp_path / "splits" / "test.csv", test, header=True)
    run("cremad", "--src", str(tmp_path / "src"), "--splits", str(tmp_path / "splits"), "--out",
        str(tmp_path / "c"), "--size", "16")
    data = load_cache(tmp_path / "c")
    n_val = round(len(train) * 744 / 6698)
    assert len(data.splits["val"]) == n_val and len(data.splits["train"]) == len(train) - n_val
    assert set(data.splits["test"].clip_ids.tolist()) == {c for c, _ in test}
    assert data.preprocessing["audio"]["source"] == "wav"
    assert data.splits["train"].inputs["audio"].dtype == np.float16


def test_prepared_cremad_loads_through_the_registry_and_trains(cremad_raw, tmp_path, tiny_config, monkeypatch):
    from drl_tune.training.engine import Engine

    out = tmp_path / "c"
    run("cremad", "--src", str(cremad_raw), "--out", str(out), "--size", "32", "--audio-frames", "64")
    data = load_dataset(DataConfig(name="cremad", root=str(out)))
    assert data.n_classes == 6
    monkeypatch.setenv("DRL_TUNE_CREMAD_ROOT", str(out))  # the environment variable works as data.root
    assert len(load_dataset(DataConfig(name="cremad")).splits["train"]) == 48
    engine = Engine(tiny_config(data__name="cremad", data__root=str(out), data__augment=True, epochs=1))
    metrics = engine.run_epoch()
    assert np.isfinite(metrics["train/loss"]) and "val/acc_audio" in metrics and "val/acc_visual" in metrics


# -- Kinetics-Sounds -----------------------------------------------------------------------------------


def test_kinetics_sounds_ogm_ge_layout_with_videos(tmp_path):
    rows = fx.make_kinetics_sounds(tmp_path / "src", n_classes=3, train_per_class=8, test_per_class=2,
                                   n_frames=10, video_every=4)
    assert any((tmp_path / "src" / "video").iterdir())
    run("kinetics_sounds", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "ks"), "--size", "32")
    data = load_cache(tmp_path / "ks")
    assert data.name == "kinetics_sounds" and data.classes == [str(i) for i in range(31)]
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 18, "val": 6, "test": 6}
    train = data.splits["train"]
    assert train.inputs["audio"].shape == (18, 1024, 128)
    assert train.inputs["visual"].shape == (18, 3, 3, 32, 32)
    truth = {clip: label for split in rows.values() for clip, label in split}
    for split in data.splits.values():
        assert [truth[c] for c in split.clip_ids] == split.labels.tolist()
        # 10 frames at 1 fps → 3: a frame folder (frame_00001 … frame_00010) gives the numbers OGM-GE's loader
        # opens, seg*i + 1 = 1, 4, 7 (positions 0, 3, 6); a video the centres of equal segments (1, 5, 8)
        for clip_id, frames, label in zip(split.clip_ids, split.inputs["visual"], split.labels, strict=True):
            from_video = (tmp_path / "src" / "video" / f"{clip_id}.mp4").is_file()
            check_frames(frames[None], label[None], [1, 5, 8] if from_video else [0, 3, 6], tol=10)
    # validation is carved from train by YouTube video: no video straddles train and val
    videos = {s: {c[:11] for c in data.splits[s].clip_ids} for s in ("train", "val")}
    assert not videos["train"] & videos["val"]
    assert sorted(data.splits["val"].labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert set(data.splits["test"].clip_ids.tolist()) == {c for c, _ in rows["test"]}


def test_kinetics_sounds_class_names_and_validation_list(tmp_path):
    src = tmp_path / "src"
    rows = fx.make_kinetics_sounds(src, n_classes=2, train_per_class=3, test_per_class=2, n_frames=4)
    names = ["playing drums", "dog barking"]
    (src / "classes.txt").write_text("\n".join(names) + "\n")
    val = rows["train"][2:4]  # one clip of each class
    train = [r for r in rows["train"] if r not in val]
    (src / "my_train.txt").write_text("".join(f"{c},{names[y]}\n" for c, y in train))  # class names
    (src / "my_val.txt").write_text("".join(f"{c} {y}\n" for c, y in val))  # space-separated indices
    run("kinetics_sounds", "--src", str(src), "--out", str(tmp_path / "ks"), "--size", "16", "--audio-frames", "50")
    data = load_cache(tmp_path / "ks")
    assert data.classes == names
    assert data.splits["val"].clip_ids.tolist() == [c for c, _ in val]
    assert data.splits["train"].labels.tolist() == [y for _, y in train]


# -- UCF-101 -------------------------------------------------------------------------------------------


def test_ucf101_rgb_and_flow_split1(tmp_path):
    rows = fx.make_ucf101(tmp_path / "src", groups=8, clips_per_group=2, test_groups=2, n_frames=6, video_every=5)
    run("ucf101", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "u"), "--size", "32")
    data = load_cache(tmp_path / "u")
    assert data.classes == list(fx.UCF_CLASSES)  # classInd.txt order
    assert data.modalities == {"rgb": "frames", "flow": "flow"}
    assert len(data.splits["test"]) == len(rows["test"]) == 16
    assert len(data.splits["train"]) + len(data.splits["val"]) == len(rows["train"]) == 48
    train = data.splits["train"]
    assert train.inputs["rgb"].shape[1:] == (3, 3, 32, 32) and train.inputs["flow"].shape[1:] == (3, 2, 32, 32)
    assert data.preprocessing["augment"] == {"rgb": "flip", "flow": "flip"}
    for split in data.splits.values():
        for clip, label in zip(split.clip_ids, split.labels, strict=True):
            name = fx.UCF_CLASSES[label]
            assert clip.split("_")[1] == ("HandStandPushups" if name == "HandstandPushups" else name)
        check_frames(split.inputs["rgb"], split.labels, [1, 3, 5], tol=10)
        flow = split.inputs["flow"].astype(np.float64)[:, :, :, 4:-4, 4:-4].mean((3, 4))
        np.testing.assert_allclose(flow[:, :, 0], np.tile([100, 102, 104], (len(split), 1)), atol=3)  # 5 flow
        np.testing.assert_allclose(flow[:, :, 1], 150 + np.repeat(split.labels[:, None], 3, 1), atol=3)
    groups = {s: {c.rsplit("_", 1)[0] for c in data.splits[s].clip_ids} for s in ("train", "val")}
    assert groups["val"] and not groups["train"] & groups["val"]


def test_module_entry_point_runs(tmp_path):
    fx.make_ucf101(tmp_path / "src", groups=4, clips_per_group=1, test_groups=1, n_frames=3)
    result = subprocess.run(
        [sys.executable, "-m", "drl_tune.data.prepare", "ucf101", "--src", str(tmp_path / "src"), "--out",
         str(tmp_path / "u"), "--size", "16", "--workers", "1", "--val-fraction", "0.3"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "prepare ucf101" in result.stderr  # the progress bar
    assert "--set data.root=" in result.stderr
    assert len(load_cache(tmp_path / "u").splits["test"]) == 4
