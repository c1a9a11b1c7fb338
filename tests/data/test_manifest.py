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

from drl_tune.data.cache import load_cache
from drl_tune.data.prepare import main as prepare
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine

CLASSES = ["cat", "dog", "owl"]
SMALL = ["--size", "16", "--n-mels", "16", "--audio-frames", "24", "--frames", "2", "--workers", "0", "--quiet"]


def write_dataset(root: Path, per_class: int = 8, split: bool = True, group: bool = False,
                  third: str = "image") -> Path:
    """Samples whose every modality carries its class (a tone's pitch, an image's brightness, a feature's mean)
    under noise. ``third``: the third modality is one image (``still:image``), a feature sequence of 3 to 7 steps of
    dimension 5 (``motion:features``) or a feature vector of dimension 6 (``motion:features``)."""
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
            row = {"id": sid, "label": label, "sound:wav": f"audio/{sid}.wav", "scene:frames": f"frames/{sid}"}
            if third == "image":
                (root / "photo").mkdir(exist_ok=True)
                pixels = np.zeros((20, 20, 3), np.uint8)
                pixels[:, : 5 + 5 * c] = 200
                Image.fromarray(pixels).save(root / "photo" / f"{sid}.png")
                row["still:image"] = f"photo/{sid}.png"
            else:
                (root / "motion").mkdir(exist_ok=True)
                shape = (int(rng.integers(3, 8)), 5) if third == "sequence" else (6,)
                np.save(root / "motion" / f"{sid}.npy", (c + rng.normal(0, 0.5, shape)).astype(np.float32))
                row["motion:features"] = f"motion/{sid}.npy"
            if split:
                row["split"] = "train" if k < per_class - 2 else ("val" if k == per_class - 2 else "test")
            if group:
                row["group"] = f"g{k}"
            rows.append(row)
    write_rows(root / "data.csv", rows)
    return root / "data.csv"


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
    write_rows(manifest, edit(rows))
    refused_in_one_line(tmp_path, capsys, manifest, words)


def refused_in_one_line(tmp_path: Path, capsys, manifest: Path, words: list[str]) -> None:
    """prepare stops with exit 2 and one line holding ``words``, and writes nothing."""
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


# -- precomputed-feature modalities --------------------------------------------------------------------------


def test_fit_features_keeps_the_first_steps_and_marks_them():
    from drl_tune.data.manifest import fit_features

    seq = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = fit_features(seq, 5)
    assert padded.tolist() == [[0, 1, 1], [2, 3, 1], [4, 5, 1], [0, 0, 0], [0, 0, 0]]
    assert fit_features(seq, 2).tolist() == [[0, 1, 1], [2, 3, 1]]
    assert fit_features(np.array([1.5, 2.5], np.float32), 0).tolist() == [1.5, 2.5]  # a vector as it is


@pytest.mark.parametrize("encoder", ["conv", "transformer"])
def test_padding_never_reaches_a_sequence_encoders_features(encoder):
    """A sequence padded to 7 steps (padding filled with junk, masked out) gives the features of the same sequence
    unpadded: the temporal model and the pooling see the real steps only."""
    from drl_tune.data.manifest import fit_features
    from drl_tune.models.encoders import FeatureSizes, SequenceEncoder

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = SequenceEncoder(4, FeatureSizes(hidden=8, layers=2, sequence_encoder=encoder, heads=2)).eval()
    seq = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    padded = fit_features(seq, 7)
    padded[3:, :-1] = 99.0  # junk under the mask
    exact = fit_features(seq, 3)
    with torch.no_grad():
        a, b = net(torch.from_numpy(padded[None])), net(torch.from_numpy(exact[None]))
    assert a.shape == (1, 8)
    assert torch.allclose(a, b, atol=1e-5), (a, b)


def test_drl_reinitialises_a_feature_encoder_by_its_own_alpha(tmp_path, capsys):
    """DRL's re-learning on a feature-sequence modality: after the diagnosis, each of its encoder's parameters is
    α·θ_init + (1 − α)·θ with that modality's own α (computed here from the parameters before and after)."""
    import torch

    manifest = write_dataset(tmp_path / "raw", third="sequence")
    rng = np.random.default_rng(5)
    for file in (tmp_path / "raw" / "motion").glob("*.npy"):  # no class signal: train and val purity differ
        np.save(file, rng.normal(size=np.load(file).shape).astype(np.float32))
    out = tmp_path / "cache"
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(out), *SMALL]) == 0, capsys.readouterr()
    data = load_cache(out)
    assert data.modalities["motion"] == "sequence" and data.splits["train"].inputs["motion"].shape[1:] == (7, 6)
    engine = Engine(make_config({"data.name": "manifest", "data.root": str(out), "method": "drl", "epochs": 2,
                                 "model.width": 4, "batch_size": 6, "lr": 0.05, "threads": 1, "drl.lam": 1.0,
                                 "eval.probe_samples": 18, "drl.diagnosis_interval": 1, "drl.max_reinits": 1}))
    engine.run_epoch()  # epoch 0: no diagnosis
    init = engine.method.init_state["motion"]
    before = {k: v.detach().clone() for k, v in engine.model.encoders["motion"].named_parameters()}
    engine.epoch = 1  # the method's diagnosis epoch, on the model as it is (no training in between)
    metrics = engine.method.on_epoch_end(engine.model, engine)
    alpha = metrics["diag/alpha_motion"]
    assert {f"diag/alpha_{m}" for m in ("sound", "scene", "motion")} <= set(metrics)
    assert 0.0 < alpha < 1.0, metrics
    for name, param in engine.model.encoders["motion"].named_parameters():
        torch.testing.assert_close(param.detach(), alpha * init[name] + (1 - alpha) * before[name])


@pytest.mark.parametrize(("third", "bad", "words"), [
    ("sequence", np.zeros((4, 3), np.float32), ["line 3, column 'motion:features'", "[4, 3]", "D = 5"]),
    ("vector", np.zeros((2, 6), np.float32), ["line 3, column 'motion:features'", "[2, 6]", "is [D] with D = 6"]),
    ("sequence", np.zeros((0, 5), np.float32), ["line 3, column 'motion:features'", "T, D >= 1"]),
    ("sequence", "not-npy", ["line 3, column 'motion:features'", "is not a .npy file"]),
])
def test_bad_feature_files_are_one_line_naming_the_row(tmp_path, capsys, third, bad, words):
    manifest = write_dataset(tmp_path / "raw", third=third)
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    if isinstance(bad, str):
        (tmp_path / "raw" / "motion" / "x.txt").write_text("1 2 3")
        rows[1]["motion:features"] = "motion/x.txt"
    else:
        np.save(tmp_path / "raw" / "motion" / "odd.npy", bad)
        rows[1]["motion:features"] = "motion/odd.npy"
    write_rows(manifest, rows)
    refused_in_one_line(tmp_path, capsys, manifest, words)


@pytest.mark.slow
def test_a_study_on_wav_frames_and_feature_sequences(tmp_path, capsys):
    """The issue's end to end: three modalities of three kinds (wav files, a folder of frames per sample, .npy
    feature sequences of varying length) prepared, then a real 2-trial study (Ray, MLflow) of DRL vs joint at equal
    budgets on it; DRL's diagnosis logs one α per modality."""
    import ray
    from mlflow import MlflowClient

    from drl_tune.run import main as run
    from drl_tune.study.plan import PLAN_FILE, Plan

    manifest = write_dataset(tmp_path / "raw", third="sequence")
    out = tmp_path / "cache"
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(out), "--sequence-length", "6",
                    *SMALL]) == 0, capsys.readouterr()
    storage = tmp_path / "studies"
    sets = {"data.root": out, "epochs": 2, "model.width": 4, "batch_size": 6, "eval.probe_samples": 18,
            "threads": 1, "drl.diagnosis_interval": 1, "drl.max_reinits": 1, "model.feature_hidden": 16}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             object_store_memory=80 * 1024 * 1024)
    try:
        code = run(["--space", "custom", "--storage", str(storage), "--name", "three", "--num-samples", "2",
                    "--confirm-seeds", "0", "--progress-interval", "0", *[f"--set={k}={v}" for k, v in sets.items()]])
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert code == 0, printed
    plan = Plan.from_json((storage / "three" / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    runs = client.search_runs([plan.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    assert sorted(r.data.params["method"] for r in runs) == ["drl", "joint"]
    assert all(r.info.status == "FINISHED" for r in runs)
    drl = next(r for r in runs if r.data.params["method"] == "drl")
    for m in ("sound", "scene", "motion"):
        history = client.get_metric_history(drl.info.run_id, f"diag/alpha_{m}")
        assert [h.step for h in history] == [1] and 0.0 <= history[0].value <= 1.0, (m, history)
        assert client.get_metric_history(drl.info.run_id, f"val/acc_{m}")
    joint = next(r for r in runs if r.data.params["method"] == "joint")
    assert not client.get_metric_history(joint.info.run_id, "diag/alpha_motion")


@pytest.mark.slow
def test_avdigits_through_the_manifest_path_trains_as_the_builtin_loader(tmp_path, capsys):
    """AV-digits written out as files (a 16 kHz float wav per clip, a folder of PNG frames per clip) and prepared
    through the manifest path gives the built-in loader's arrays (frames exactly, spectrograms to float16
    rounding) and, with the same seed, the same first-epoch training loss: the generic path is not a second,
    looser implementation."""
    pytest.importorskip("espeakng_loader", reason="AV-digits needs the optional extra: pip install -e '.[avdigits]'")
    from drl_tune.data.avdigits import N_FRAMES, N_MELS, SAMPLE_RATE, generate_clips

    small = {"n_images": 100, "languages": ["en-us", "de"], "speakers_train": 2, "speakers_val": 1,
             "speakers_test": 1, "image_size": 16}
    config = make_config({f"data.avdigits.{k}": v for k, v in small.items()} | {"data.name": "avdigits"})
    clips, _, _ = generate_clips(config.data.avdigits)
    raw = tmp_path / "raw"
    rows = []
    for split, (waves, frames, labels, ids) in clips.items():
        for wave, clip, label, cid in zip(waves.numpy(), frames, labels, ids, strict=True):
            soundfile.write(_mkdir(raw / "audio") / f"{cid}.wav", wave, SAMPLE_RATE, subtype="FLOAT")
            folder = _mkdir(raw / "frames" / cid)
            for f, frame in enumerate(clip):
                Image.fromarray(frame.transpose(1, 2, 0)).save(folder / f"{f}.png")
            rows.append({"id": cid, "label": str(label), "split": split, "audio:wav": f"audio/{cid}.wav",
                         "visual:frames": f"frames/{cid}"})
    write_rows(raw / "avdigits.csv", rows)
    out = tmp_path / "cache"
    c = config.data.avdigits
    assert prepare(["manifest", "--manifest", str(raw / "avdigits.csv"), "--out", str(out), "--size",
                    str(c.image_size), "--n-mels", str(N_MELS), "--audio-frames", str(N_FRAMES), "--frames",
                    str(c.frames), "--sample-rate", str(SAMPLE_RATE), "--workers", "0", "--quiet"]) == 0, \
        capsys.readouterr()

    builtin = Engine(make_config({**config.to_flat(), "method": "joint", "epochs": 1, "model.width": 4,
                                  "batch_size": 16, "threads": 1}))
    generic = Engine(make_config({**config.to_flat(), "data.name": "manifest", "data.root": str(out),
                                  "method": "joint", "epochs": 1, "model.width": 4, "batch_size": 16, "threads": 1}))
    assert generic.data.classes == builtin.data.classes and list(generic.data.modalities) == ["audio", "visual"]
    for split in ("train", "val", "test"):
        a, b = builtin.data.splits[split], generic.data.splits[split]
        assert list(a.clip_ids) == list(b.clip_ids) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.inputs["visual"], b.inputs["visual"])
        spec_a, spec_b = np.asarray(a.inputs["audio"], np.float32), np.asarray(b.inputs["audio"], np.float32)
        np.testing.assert_allclose(spec_b, spec_a, rtol=2e-3, atol=2e-3)  # float16 storage: ~1e-3 relative
    loss_builtin, loss_generic = builtin.run_epoch()["train/loss"], generic.run_epoch()["train/loss"]
    with capsys.disabled():
        print(f"\nAV-digits, first-epoch loss: built-in loader {loss_builtin:.6f}, manifest path {loss_generic:.6f}")
    assert loss_generic == pytest.approx(loss_builtin, rel=1e-4, abs=1e-5)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
