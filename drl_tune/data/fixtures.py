"""Tiny fake datasets in each raw layout, made of real files (wav, jpg, flv/mp4/avi), for tests and the benchmark.

Content encodes what a test must check after ``prepare`` → ``load``: a clip's frames are filled with its
class colour (red channel = 30 + 35·label) and its frame index (green channel = 10 + 20·index, so the
frames ``prepare`` picked can be read back); its audio is a tone whose pitch follows its label.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

CREMAD_EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # the order of the official stat.csv
SENTENCES = ("DFA", "IEO", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI", "WSI")


def frame_colour(label: int, index: int) -> tuple[int, int, int]:
    return 30 + 35 * (label % 7), 10 + 20 * (index % 12), 128


def frame_image(label: int, index: int, width: int, height: int, texture: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] of one frame (``texture`` adds a deterministic pattern, for realistic jpg sizes)."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = frame_colour(label, index)
    if texture:
        yy, xx = np.mgrid[0:height, 0:width]
        image[..., 2] = ((xx * 7 + yy * 3 + index * 11) % 256).astype(np.uint8)
    return image


def write_jpg(path: Path, image: np.ndarray, quality: int = 95) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)


def tone(label: int, seconds: float, sample_rate: int) -> np.ndarray:
    """A tone at 300·2^(label/2) Hz in the first half, faint noise in the second (per-clip mean removal
    would erase a tone that never stops)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 300.0 * 2 ** (label / 2) * t) * (t < seconds / 2)
    wave += 0.001 * np.random.default_rng(label).standard_normal(len(t))
    return wave.astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, sample_rate, subtype="PCM_16")


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 10) -> None:
    """A real video file; the codec follows the extension (flv → FLV1 as CREMA-D's, else MPEG-4 part 2)."""
    import av

    frames = list(frames)
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    codec: Literal["flv", "mpeg4"] = "flv" if path.suffix == ".flv" else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "2"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def cremad_clips(per_class: int) -> list[tuple[str, str]]:
    """(clip id, emotion) pairs named as the corpus: ``<actor>_<sentence>_<emotion>_<level>``."""
    clips = []
    for e, emotion in enumerate(CREMAD_EMOTIONS):
        for k in range(per_class):
            actor = 1001 + (k + e) % 91
            clips.append((f"{actor}_{SENTENCES[k % len(SENTENCES)]}_{emotion}_X{k // len(SENTENCES)}", emotion))
    return sorted(clips)


def make_cremad_raw(root: Path, per_class: int = 10, n_frames: int = 6, size: tuple[int, int] = (48, 36),
                    seconds: float = 0.4, sample_rate: int = 16000) -> list[tuple[str, str]]:
    """The raw corpus layout: ``AudioWAV/<clip>.wav`` + ``VideoFlash/<clip>.flv``."""
    clips = cremad_clips(per_class)
    for clip, emotion in clips:
        label = sorted(CREMAD_EMOTIONS).index(emotion)
        write_wav(root / "AudioWAV" / f"{clip}.wav", tone(label, seconds, sample_rate), sample_rate)
        write_video(root / "VideoFlash" / f"{clip}.flv", [frame_image(label, i, *size) for i in range(n_frames)])
    return clips


def make_cremad_official(root: Path, per_class: int = 10, n_frames: int = 4, size: tuple[int, int] = (48, 36),
                         audio: str = "pt", audio_frames: int = 50, texture: bool = False,
                         sample_rate: int = 16000) -> list[tuple[str, str]]:
    """The layout the official code reads: ``visual/<clip>/frame_000NN.jpg`` + ``audio/<clip>.pt|.wav``.

    ``.pt`` files hold a [audio_frames, 128] float tensor whose every value is the clip's label.
    """
    import torch

    clips = cremad_clips(per_class)
    for clip, emotion in clips:
        label = sorted(CREMAD_EMOTIONS).index(emotion)
        for i in range(n_frames):
            write_jpg(root / "visual" / clip / f"frame_000{i + 1:02d}.jpg", frame_image(label, i, *size, texture))
        (root / "audio").mkdir(parents=True, exist_ok=True)
        if audio == "pt":
            torch.save(torch.full((audio_frames, 128), float(label)), root / "audio" / f"{clip}.pt")
        else:
            write_wav(root / "audio" / f"{clip}.wav", tone(label, 0.4, sample_rate), sample_rate)
    return clips


def write_csv(path: Path, rows: Iterable[Iterable[str]], bom: bool = False, crlf: bool = False,
              header: bool = False) -> None:
    """A split CSV as the official ones come: optional UTF-8 BOM, CRLF line ends, ``name,label`` header."""
    lines = (["name,label"] if header else []) + [",".join(row) for row in rows]
    end = "\r\n" if crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (end.join(lines) + end).encode())


def make_kinetics_sounds(root: Path, n_classes: int = 3, train_per_class: int = 8, test_per_class: int = 2,
                         n_frames: int = 10, size: tuple[int, int] = (40, 30), seconds: float = 0.5,
                         video_every: int = 0, sample_rate: int = 16000) -> dict[str, list[tuple[str, int]]]:
    """OGM-GE's layout: ``my_train.txt`` / ``my_test.txt`` (``<clip>,10,<label>``), ``audio/<clip>.wav``,
    ``visual/<clip>/frame_0000N.jpg`` (1 fps); every ``video_every``-th clip comes as ``video/<clip>.mp4``.
    Two clips are cut from each YouTube video (same 11-character id)."""
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    count = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for label in range(n_classes):
            for k in range(per_class):
                video_id = f"{split[:2]}{label:02d}{k // 2:03d}abcd"[:11].ljust(11, "x")
                clip = f"{video_id}_{(k % 2) * 10:06d}_{(k % 2) * 10 + 10:06d}"
                splits[split].append((clip, label))
                write_wav(root / "audio" / f"{clip}.wav", tone(label, seconds, sample_rate), sample_rate)
                frames = [frame_image(label, i, *size) for i in range(n_frames)]
                count += 1
                if video_every and count % video_every == 0:
                    write_video(root / "video" / f"{clip}.mp4", frames)
                else:
                    for i, image in enumerate(frames):
                        write_jpg(root / "visual" / clip / f"frame_{i + 1:05d}.jpg", image)
    for split, name in (("train", "my_train.txt"), ("test", "my_test.txt")):
        (root / name).write_text("".join(f"{clip},10,{label}\n" for clip, label in splits[split]))
    return splits


UCF_CLASSES = ("ApplyEyeMakeup", "BabyCrawling", "HandstandPushups", "YoYo")


def make_ucf101(root: Path, groups: int = 10, clips_per_group: int = 2, test_groups: int = 2,
                n_frames: int = 6, size: tuple[int, int] = (40, 30), video_every: int = 0) -> dict[str, list[str]]:
    """The two-stream layout: ``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``, ``rgb/<clip>/``,
    ``flow/u|v/<clip>/`` (flow u = 100 + frame index, v = 150 + label); every ``video_every``-th clip's RGB
    comes as ``UCF-101/<Class>/<clip>.avi`` instead of frames. Groups 1..test_groups are the test set."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(UCF_CLASSES)))
    out: dict[str, list[str]] = {"train": [], "test": []}
    train_lines, test_lines = [], []
    count = 0
    for label, name in enumerate(UCF_CLASSES):
        folder = "HandStandPushups" if name == "HandstandPushups" else name  # the corpus' own spelling quirk
        for g in range(1, groups + 1):
            for c in range(1, clips_per_group + 1):
                clip = f"v_{folder}_g{g:02d}_c{c:02d}"
                if g <= test_groups:
                    test_lines.append(f"{name}/{clip}.avi\r\n")
                    out["test"].append(clip)
                else:
                    train_lines.append(f"{name}/{clip}.avi {label + 1}\r\n")
                    out["train"].append(clip)
                frames = [frame_image(label, i, *size) for i in range(n_frames)]
                count += 1
                if video_every and count % video_every == 0:
                    write_video(root / "UCF-101" / name / f"{clip}.avi", frames)
                else:
                    for i, image in enumerate(frames):
                        write_jpg(root / "rgb" / clip / f"frame_{i + 1:05d}.jpg", image)
                for i in range(n_frames - 1):
                    w, h = size
                    write_jpg(root / "flow" / "u" / clip / f"frame{i + 1:06d}.jpg", np.full((h, w), 100 + i, np.uint8))
                    write_jpg(root / "flow" / "v" / clip / f"frame{i + 1:06d}.jpg",
                              np.full((h, w), 150 + label, np.uint8))
    (lists / "trainlist01.txt").write_text("".join(train_lines))
    (lists / "testlist01.txt").write_text("".join(test_lines))
    return out
