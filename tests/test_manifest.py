"""Your own dataset from a manifest (drl_tune/data/manifest.py): three modalities of three kinds (wav files, a
folder of frames per sample, one image per sample) prepared into the shared cache and trained on with DRL, which
diagnoses every modality; and the manifest's bad inputs, each one line naming the row and column, nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from drl_tune.core.config import make_config
from drl_tune.core.engine import Engine
from drl_tune.data.cache import load_cache
from drl_tune.data.prepare import main as prepare

CLASSES = ["cat", "dog", "owl"]
SMALL = ["--size", "16", "--n-mels", "16", "--audio-frames", "24", "--frames", "2", "--workers", "0", "--quiet"]


def write_dataset(root: Path, per_class: int = 8, split: bool = True, group: bool = False) -> Path:
    """Samples whose every modality carries its class (a tone's pitch, an image's brightness) under noise."""
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(CLASSES):
        for k in range(per_class):
            sid = f"{label}-{k}"
            t = np.arange(8000) / 16000
            wave = 0.5 * np.sin(2 * np.pi * (300 + 250 * c) * t) + 0.2 * rng.standard_normal(t.size)
            (root / "audio").mkdir(parents=True, exist_ok=True)
            soundfile.write(root / "audio" / f"{sid}.wav", wave.astype(np.float32), 16000)
            frames = root / "frames" / sid
            frames.mkdir(parents=True, exist_ok=True)
            for f in range(3):
                pixels = np.clip(60 + 70 * c + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(frames / f"{f:03d}.png")
            (root / "photo").mkdir(exist_ok=True)
            pixels = np.zeros((20, 20, 3), np.uint8)
            pixels[:, : 5 + 5 * c] = 200
            Image.fromarray(pixels).save(root / "photo" / f"{sid}.png")
            row = {"id": sid, "label": label, "sound:wav": f"audio/{sid}.wav", "scene:frames": f"frames/{sid}",
                   "still:image": f"photo/{sid}.png"}
            if split:
                row["split"] = "train" if k < per_class - 2 else ("val" if k == per_class - 2 else "test")
            if group:
                row["group"] = f"g{k}"
            rows.append(row)
    path = root / "data.csv"
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_three_modalities_prepared_and_trained_with_drl(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(out), *SMALL]) == 0, capsys.readouterr()
    data = load_cache(out)
    assert data.name == "manifest" and data.classes == CLASSES
    assert data.modalities == {"sound": "spectrogram", "scene": "frames", "still": "frames"}
    assert {s: len(split) for s, split in data.splits.items()} == {"train": 18, "val": 3, "test": 3}
    train = data.splits["train"]
    assert train.inputs["sound"].shape[1:] == (24, 16) and train.inputs["scene"].shape[1:] == (2, 3, 16, 16)
    assert np.array_equal(train.inputs["still"][:, 0], train.inputs["still"][:, 1])  # one image, repeated
    manifest_entry = json.loads((out / "manifest.json").read_text())["preprocessing"]["manifest"]
    assert manifest_entry["columns"] == ["sound:wav", "scene:frames", "still:image"]
    assert len(manifest_entry["sha256"]) == 64
    engine = Engine(make_config({"data.name": "manifest", "data.root": str(out), "method": "drl", "epochs": 2,
                                 "model.width": 4, "batch_size": 6, "lr": 0.05, "threads": 1,
                                 "eval.probe_samples": 18, "drl.diagnosis_interval": 1, "drl.max_reinits": 1}))
    metrics = [engine.run_epoch() for _ in range(2)]
    assert {f"val/acc_{m}" for m in ("sound", "scene", "still")} <= set(metrics[0])
    diagnosed = metrics[1]  # the diagnosis after epoch 1: one α per modality, each in [0, 1)
    assert all(0.0 <= diagnosed[f"diag/alpha_{m}"] < 1.0 for m in ("sound", "scene", "still"))
    probes = [metrics[1][f"val/acc_{m}"] for m in ("sound", "scene", "still")]
    assert metrics[1]["balance/gap"] == pytest.approx(max(probes) - min(probes))


def test_a_group_never_spans_two_splits(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "raw", split=False, group=True)
    out = tmp_path / "cache"
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(out), "--seed", "3", *SMALL]) == 0, \
        capsys.readouterr()
    data = load_cache(out)
    groups = {s: {cid.rsplit("-", 1)[1] for cid in split.clip_ids} for s, split in data.splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) \
        and not (groups["val"] & groups["test"])
    assert all(len(split) for split in data.splits.values())


def damage(column: str, value: str, line: int = 2):
    def edit(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        rows[line - 2][column] = value
        return rows
    return edit


@pytest.mark.parametrize(("edit", "words"), [
    (lambda rows: [{k: v for k, v in r.items() if k != "label"} for r in rows], ["missing the column 'label'"]),
    (lambda rows: [{**{k: v for k, v in r.items() if k != "still:image"}, "still:pdf": "x"} for r in rows],
     ["column 'still:pdf': unknown kind 'pdf'", "known: wav, frames, video, image"]),
    (damage("sound:wav", "audio/nope.wav", 3), ["line 3, column 'sound:wav'", "nope.wav does not exist"]),
    (damage("id", "cat-0", 3), ["line 3, column 'id'", "also the id on line 2"]),
    (lambda rows: [{**r, "label": "emu"} if r["id"] == "owl-7" else r for r in rows],
     ["column 'label': 'emu' appears in test but never in train"]),
    (lambda rows: [{**r, "split": "train"} if r["split"] == "val" else r for r in rows], ["the val split is empty"]),
    (lambda rows: [{k: v for k, v in r.items() if k not in ("scene:frames", "still:image")} for r in rows],
     ["1 modality column(s); a multimodal dataset needs at least two"]),
    (damage("split", "holdout", 5), ["line 5, column 'split': 'holdout'"]),
])
def test_bad_manifests_are_one_line_and_write_nothing(tmp_path, capsys, edit, words):
    manifest = write_dataset(tmp_path / "raw", per_class=8)
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    rows = edit(rows)
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "cache"
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


def test_the_custom_space_runs_on_a_prepared_manifest_and_pair_methods_refuse_three(tmp_path, capsys):
    """``--space custom --set data.root=DIR`` plans joint vs DRL at equal budgets on any prepared manifest; a study
    that would run a comparator defined for two modalities on three stops before anything starts, one line."""
    from drl_tune.run import main as run

    manifest = write_dataset(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    storage = tmp_path / "studies"
    assert run(["--space", "custom", "--set", f"data.root={out}", "--dry-run", "--storage", str(storage)]) == 0
    printed = capsys.readouterr().out
    assert "equal budgets: drl, joint in turn, 8 search trials each" in printed and "data.name" in printed
    assert run(["--space", "demo_compare", "--set", "data.name=manifest", "--set", f"data.root={out}", "--dry-run",
                "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: method ogm_ge is defined for exactly two modalities, this run has 3 (sound, scene, still); "
                   "set data.modalities to two of them (or leave it out of search.method)\n")
    assert run(["--space", "demo_compare", "--set", "data.name=manifest", "--set", f"data.root={out}",
                "--set", "data.modalities=sound,scene", "--dry-run", "--storage", str(storage)]) == 0
    assert not storage.exists()
