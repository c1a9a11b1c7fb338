"""Bad input: one clear message naming the file, exit status 2, and never a half-written cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from drl_tune.data import fixtures as fx
from drl_tune.data import load_dataset
from drl_tune.data.cache import CacheError, load_cache
from drl_tune.data.config import DataConfig
from drl_tune.data.prepare import main as prepare


@pytest.fixture
def run(capsys):
    """prepare(argv) -> (exit status, stderr)."""

    def call(*argv: str) -> tuple[int, str]:
        code = prepare([*argv, "--workers", "0", "--quiet"])
        return code, capsys.readouterr().err

    return call


def official(tmp_path: Path, per_class: int = 3, **kw) -> tuple[Path, Path, list[tuple[str, str]]]:
    """A CREMA-D official-layout source with split CSVs: clip 0 of each class → test, 1 → val, rest → train."""
    src, splits = tmp_path / "src", tmp_path / "splits"
    clips = fx.make_cremad_official(src, per_class=per_class, n_frames=2, **kw)
    by_class = {e: [c for c in clips if c[1] == e] for e in fx.CREMAD_EMOTIONS}
    fx.write_csv(splits / "test.csv", [v[0] for v in by_class.values()], header=True)
    fx.write_csv(splits / "val.csv", [v[1] for v in by_class.values()])
    fx.write_csv(splits / "my_train.csv", [c for v in by_class.values() for c in v[2:]])
    return src, splits, clips


def args(src: Path, splits: Path, out: Path, *extra: str) -> list[str]:
    return ["cremad", "--src", str(src), "--splits", str(splits), "--out", str(out), "--size", "16", *extra]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]  # temp dir removed


def test_missing_source_dir(run, tmp_path):
    code, err = run("cremad", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "c"))
    assert code == 2 and err.startswith("error: ") and str(tmp_path / "nope") in err and "does not exist" in err


def test_unknown_layout_says_what_is_expected(run, tmp_path):
    (tmp_path / "src").mkdir()
    code, err = run("cremad", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "c"))
    assert code == 2 and "AudioWAV/ and VideoFlash/" in err and "audio/ and visual/" in err


def test_listed_clip_absent_fails_by_default_and_skip_missing_reports_the_count(run, tmp_path):
    src, splits, clips = official(tmp_path, per_class=3)
    victim = [c for c, e in clips if e == "SAD"][2]  # a training clip
    for f in (src / "visual" / victim).iterdir():
        f.unlink()
    (src / "visual" / victim).rmdir()
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and victim in err and str(splits / "my_train.csv") in err and "--skip-missing" in err
    assert str(src / "visual" / victim) in err
    assert_nothing_written(tmp_path / "c")

    code, err = run(*args(src, splits, tmp_path / "c", "--skip-missing"))
    assert code == 0 and "skipped 1 clips" in err and victim in err
    data = load_cache(tmp_path / "c")
    assert len(data.splits["train"]) == 5 and victim not in data.splits["train"].clip_ids
    assert data.preprocessing["skipped_missing"] == {"train": 1}


def test_raw_corpus_clip_without_video(run, tmp_path):
    fx.make_cremad_raw(tmp_path / "src", per_class=10, n_frames=2)
    victim = sorted((tmp_path / "src" / "VideoFlash").iterdir())[3]
    victim.unlink()
    code, err = run("cremad", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "c"), "--size", "16")
    assert code == 2 and str(victim) in err
    code, err = run("cremad", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "c"), "--size", "16",
                    "--skip-missing")
    assert code == 0 and "skipped 1 clips" in err
    assert sum(len(s) for s in load_cache(tmp_path / "c").splits.values()) == 59


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_jpg(run, tmp_path, damage):
    src, splits, clips = official(tmp_path)
    frame = src / "visual" / clips[-1][0] / "frame_00002.jpg"
    data = frame.read_bytes()
    frame.write_bytes({"garbage": b"not a jpeg at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and f"error: {frame}: cannot decode image" in err
    assert_nothing_written(tmp_path / "c")


def test_corrupt_wav(run, tmp_path):
    src, splits, clips = official(tmp_path, audio="wav")
    wav = src / "audio" / f"{clips[0][0]}.wav"
    wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and f"error: {wav}: cannot read audio" in err
    assert_nothing_written(tmp_path / "c")


def test_corrupt_official_pt_and_wrong_shape(run, tmp_path):
    import torch

    src, splits, clips = official(tmp_path)
    pt = src / "audio" / f"{clips[1][0]}.pt"
    pt.write_bytes(b"\x80\x02garbage")
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and f"error: {pt}: cannot read the spectrogram" in err
    torch.save(torch.zeros(40, 64), pt)
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and str(pt) in err and "[40, 64]" in err and "--n-mels" in err


def test_corrupt_video(run, tmp_path):
    fx.make_cremad_raw(tmp_path / "src", per_class=10, n_frames=2)
    flv = sorted((tmp_path / "src" / "VideoFlash").iterdir())[7]
    flv.write_bytes(b"FLV\x01" + bytes(range(256)) * 4)
    code, err = run("cremad", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "c"), "--size", "16")
    assert code == 2 and f"error: {flv}: cannot decode video" in err
    assert_nothing_written(tmp_path / "c")


def test_label_not_in_class_list(run, tmp_path):
    src, splits, clips = official(tmp_path)
    fx.write_csv(splits / "val.csv", [(clips[1][0], "BORED")], bom=True, crlf=True)
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and f"{splits / 'val.csv'}, line 1" in err and "'BORED'" in err and "ANG" in err


def test_label_not_in_stat_csv(run, tmp_path):
    src, splits, clips = official(tmp_path)
    fx.write_csv(splits / "stat.csv", [[e] for e in fx.CREMAD_EMOTIONS if e != "NEU"], bom=True, crlf=True)
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and "'NEU'" in err and "is not a class" in err


@pytest.mark.parametrize("content", [b"name,label\r\n", b"\xef\xbb\xbf", b"\r\n\r\n"])
def test_empty_split(run, tmp_path, content):
    src, splits, _ = official(tmp_path)
    (splits / "test.csv").write_bytes(content)
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and f"{splits / 'test.csv'}: the split file lists no clips" in err


def test_split_empty_once_missing_clips_are_skipped(run, tmp_path):
    src, splits, clips = official(tmp_path)
    fx.write_csv(splits / "val.csv", [("1999_XXX_ANG_XX", "ANG")])
    code, err = run(*args(src, splits, tmp_path / "c", "--skip-missing"))
    assert code == 2 and "val split" in err and "empty" in err


def test_clip_in_two_splits_is_a_leak(run, tmp_path):
    src, splits, clips = official(tmp_path)
    fx.write_csv(splits / "test.csv", [clips[0], clips[-1]])
    fx.write_csv(splits / "my_train.csv", [clips[-1]])
    code, err = run(*args(src, splits, tmp_path / "c"))
    assert code == 2 and clips[-1][0] in err and "both" in err


def test_kinetics_label_out_of_range_and_missing_list(run, tmp_path):
    src = tmp_path / "src"
    rows = fx.make_kinetics_sounds(src, n_classes=2, train_per_class=2, test_per_class=1, n_frames=3)
    (src / "my_test.txt").write_text(f"{rows['test'][0][0]},10,31\n")
    code, err = run("kinetics_sounds", "--src", str(src), "--out", str(tmp_path / "k"))
    assert code == 2 and str(src / "my_test.txt") in err and "'31'" in err and "0..30" in err
    (src / "my_test.txt").unlink()
    code, err = run("kinetics_sounds", "--src", str(src), "--out", str(tmp_path / "k"))
    assert code == 2 and "no test list" in err and "my_test.txt" in err


def test_ucf_class_not_in_classind(run, tmp_path):
    src = tmp_path / "src"
    fx.make_ucf101(src, groups=3, clips_per_group=1, test_groups=1, n_frames=3)
    with open(src / "ucfTrainTestlist" / "testlist01.txt", "a") as f:
        f.write("Juggling/v_Juggling_g01_c01.avi\r\n")
    code, err = run("ucf101", "--src", str(src), "--out", str(tmp_path / "u"))
    assert code == 2 and "testlist01.txt, line 5" in err and "'Juggling'" in err


def test_ucf_flow_u_v_disagree(run, tmp_path):
    src = tmp_path / "src"
    fx.make_ucf101(src, groups=3, clips_per_group=1, test_groups=1, n_frames=4)
    sorted((src / "flow" / "v" / "v_YoYo_g01_c01").iterdir())[-1].unlink()
    code, err = run("ucf101", "--src", str(src), "--out", str(tmp_path / "u"), "--size", "16", "--val-fraction", "0.3")
    assert code == 2 and "v_YoYo_g01_c01" in err and "flow frames" in err


def test_out_is_never_clobbered(run, tmp_path):
    src, splits, _ = official(tmp_path)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    code, err = run(*args(src, splits, other))
    assert code == 2 and "not a prepared cache" in err and (other / "thesis.tex").exists()
    out = tmp_path / "c"
    assert run(*args(src, splits, out))[0] == 0
    code, err = run(*args(src, splits, out))
    assert code == 2 and "--force" in err
    assert run(*args(src, splits, out, "--force"))[0] == 0
    assert load_cache(out).name == "cremad"


def test_failure_midway_leaves_the_previous_cache_intact(run, tmp_path):
    src, splits, clips = official(tmp_path)
    out = tmp_path / "c"
    assert run(*args(src, splits, out))[0] == 0
    before = load_cache(out).splits["train"].clip_ids.tolist()
    (src / "visual" / clips[-1][0] / "frame_00001.jpg").write_bytes(b"broken")
    code, err = run(*args(src, splits, out, "--force"))
    assert code == 2 and "cannot decode image" in err
    assert load_cache(out).splits["train"].clip_ids.tolist() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.tmp")]


def test_cache_of_another_version_and_absent_cache(tmp_path):
    src, splits, _ = official(tmp_path)
    out = tmp_path / "c"
    assert prepare(args(src, splits, out, "--quiet", "--workers", "0")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = 0
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="version 0.*reads version 1.*drl_tune.data.prepare cremad"):
        load_cache(out)
    with pytest.raises(CacheError, match=r"python -m drl_tune\.data\.prepare cremad"):
        load_dataset(DataConfig(name="cremad", root=str(out)))
    with pytest.raises(CacheError, match=r"(?s)not prepared.*python -m drl_tune\.data\.prepare ucf101 --src RAW_DIR"):
        load_dataset(DataConfig(name="ucf101", root=str(tmp_path / "nothing")))


def test_damaged_cache_array_names_the_file(tmp_path):
    src, splits, _ = official(tmp_path)
    out = tmp_path / "c"
    assert prepare(args(src, splits, out, "--quiet", "--workers", "0")) == 0
    (out / "val" / "visual.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CacheError, match=r"val/visual\.npy: missing or damaged"):
        load_cache(out)
    np.save(out / "val" / "visual.npy", np.zeros((1, 2, 3, 16, 16), np.uint8))
    with pytest.raises(CacheError, match=r"val/visual\.npy: 1 rows, the manifest says 6"):
        load_cache(out)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        prepare(["nosuchset", "--src", "x"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
