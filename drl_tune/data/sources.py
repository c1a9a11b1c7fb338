"""Readers for raw dataset files (wav, official fbank tensors, jpg frames, video) and the prepare plan.

Every reader turns a failure into a :class:`PrepareError` whose message names the file and says what to do,
so ``prepare`` can stop with one clear line instead of a decoder's traceback.

Audio: ``soundfile`` reads the wav files (torchaudio 2.11's ``torchaudio.load`` needs the separate
torchcodec package; libsndfile ships inside the soundfile wheel, so nothing is installed system-wide),
``torchaudio.functional.resample`` brings every clip to one sample rate, and :func:`drl_tune.data.audio.log_fbank`
(torchaudio's Kaldi fbank) makes the spectrogram. Video: PyAV, whose wheels carry their own FFmpeg.
Images: PIL, resized with ``Image.resize((size, size), BILINEAR)`` — what the official evaluation transform
``Resize((224, 224))`` does to a PIL image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drl_tune.data.audio import log_fbank
from drl_tune.data.cache import CacheError
from drl_tune.ground.modality import ModalityKind

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".flv", ".mp4", ".avi", ".mkv", ".webm", ".mov")


class PrepareError(CacheError):
    """Raw input that cannot be prepared; the message names the file and what to do about it."""


@dataclass(frozen=True)
class Item:
    """One clip to prepare: its id, label index and where each of its inputs is on disk.

    ``sources`` keys: ``audio`` (wav/pt/npy file), ``frames`` (a folder of images), ``video`` (a video file),
    ``flow_u`` / ``flow_v`` (folders of optical-flow images).
    """

    clip_id: str
    label: int
    sources: dict[str, str]


@dataclass
class PreparePlan:
    """Everything ``prepare`` needs to write a cache: classes, per-split items and how to decode one."""

    dataset: str
    classes: list[str]
    modalities: Mapping[str, tuple[str, tuple[int, ...]]]
    splits: dict[str, list[Item]]
    decode: Callable[[Item], dict[str, np.ndarray]]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())


def keep_complete(
    clip: str, missing: list[str], listed_in: object, split: str, skip_missing: bool, skipped: dict[str, list[str]]
) -> bool:
    """True when ``clip`` has all its inputs. Otherwise fail naming the missing files (the default), or
    with ``--skip-missing`` record the clip under ``skipped[split]`` and return False."""
    if not missing:
        return True
    if not skip_missing:
        listed = f" listed in {listed_in}" if listed_in else ""
        raise PrepareError(f"clip {clip}{listed} is missing {' and '.join(missing)}; "
                           "restore it or pass --skip-missing to leave such clips out")
    skipped.setdefault(split, []).append(clip)
    return False


def require_items(items: list[Item], split: str, source: object) -> list[Item]:
    """``items``, or a clear error when a split is empty once missing clips are left out."""
    if not items:
        raise PrepareError(f"the {split} split of {source} is empty once missing clips are left out")
    return items


def audio_preprocessing(audio_kind: str, n_mels: int, sample_rate: int, n_frames: int, precomputed: str) -> dict:
    """The manifest's description of the audio features (``audio_kind``: the source files' suffix)."""
    from_wav = audio_kind == "wav"
    return {
        "source": audio_kind,
        "features": "kaldi fbank (torchaudio.compliance.kaldi.fbank), hanning window, htk_compat, no dither"
        if from_wav else f"{precomputed}, stored as is",
        "n_mels": n_mels,
        "frame_shift_ms": 10.0,
        "frame_length_ms": 25.0,
        "sample_rate": sample_rate,
        "n_frames": n_frames,
        "normalisation": "per-clip mean removed per mel bin (Kaldi CMN); zero-padded / cropped at the end"
        if from_wav else "as in the source files; zero-padded / cropped at the end",
    }


def frames_preprocessing(frames: int, size: int, sampling: str) -> dict:
    """The manifest's description of the stored video frames."""
    return {
        "frames": frames,
        "size": size,
        "sampling": sampling,
        "resize": "PIL bilinear to size x size (the official evaluation Resize)",
    }


# -- audio ---------------------------------------------------------------------------------------------


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at ``sample_rate`` (channels averaged, resampled if needed)."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        raise PrepareError(f"{path}: cannot read audio ({err}); replace the file or leave the clip out") from None
    if data.shape[0] == 0:
        raise PrepareError(f"{path}: audio file holds no samples; replace the file or leave the clip out")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        import torch
        from torchaudio.functional import resample

        wave = resample(torch.from_numpy(np.ascontiguousarray(wave)), int(rate), int(sample_rate)).numpy()
    return wave


def wav_features(path: str | Path, sample_rate: int, n_mels: int, n_frames: int) -> np.ndarray:
    """[n_frames, n_mels] Kaldi log-mel fbank of a wav file (per-clip mean removed, see ``log_fbank``)."""
    wave = read_wav(path, sample_rate)
    window = int(sample_rate * 0.025)
    if len(wave) < window:  # shorter than one 25 ms window: Kaldi would return no frame at all
        wave = np.pad(wave, (0, window - len(wave)))
    return log_fbank(wave, sample_rate, n_mels=n_mels, n_frames=n_frames)


def feature_file(path: str | Path, n_mels: int, n_frames: int) -> np.ndarray:
    """A precomputed fbank (the official ``.pt`` tensor or an ``.npy`` array) [T, n_mels], padded/cropped."""
    path = Path(path)
    try:
        if path.suffix == ".pt":
            import torch

            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise PrepareError(f"{path}: expected a tensor, found {type(value).__name__}")
            feats = value.float().numpy()
        else:
            feats = np.load(path, allow_pickle=False).astype(np.float32)
    except PrepareError:
        raise
    except Exception as err:  # torch.load / np.load raise many types on a damaged file
        raise PrepareError(f"{path}: cannot read the spectrogram ({type(err).__name__}: {err}); "
                           "replace the file or leave the clip out") from None
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.ndim != 2 or feats.shape[1] != n_mels:
        raise PrepareError(f"{path}: spectrogram of shape {list(feats.shape)}, expected [time, {n_mels}] "
                           f"(pass --n-mels to match the files)")
    if not np.isfinite(feats).all():
        raise PrepareError(f"{path}: spectrogram holds NaN or infinite values; replace the file")
    return fit_length(feats, n_frames)


def fit_length(feats: np.ndarray, n_frames: int) -> np.ndarray:
    """Crop or zero-pad [T, F] along time to ``n_frames``."""
    if feats.shape[0] >= n_frames:
        return feats[:n_frames]
    return np.pad(feats, ((0, n_frames - feats.shape[0]), (0, 0)))


def audio_features(path: str | Path, sample_rate: int, n_mels: int, n_frames: int) -> np.ndarray:
    """Spectrogram of one clip, from a wav file or a precomputed ``.pt`` / ``.npy`` fbank."""
    if Path(path).suffix in (".pt", ".npy"):
        return feature_file(path, n_mels, n_frames)
    return wav_features(path, sample_rate, n_mels, n_frames)


# -- images and video ----------------------------------------------------------------------------------


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in natural order (frame_2 before frame_10)."""
    folder = Path(folder)
    frames = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_natural_key)
    if not frames:
        raise PrepareError(f"{folder}: frame folder holds no {'/'.join(IMAGE_EXTS)} files")
    return frames


def pick_evenly(available: int, n: int) -> list[int]:
    """Indices of ``n`` frames out of ``available``: the centre of each of n equal segments."""
    return [min(available - 1, int((i + 0.5) * available / n)) for i in range(n)]


# The frame numbers the official loaders open in a clip's folder of F numbered frames, seg = F // n. They name a
# frame by the number in its file name, not by its position in the folder (the two differ by one where numbering
# starts at 1), so these rules pick by number (:func:`folder_frames`).
FRAME_RULES: dict[str, str] = {
    # DRL code/dataset/av_dataset.py lines 99-109, the branch every split but the baseline's 'train' takes:
    # seg = int(file_num / pick_num); index = i*seg + int(seg/2); 'frame_000' + str(index).zfill(2) + '.jpg'
    "drl": "frame number i*seg + seg//2 of the folder's F frames, seg = F//n (the official DRL loader, "
           "code/dataset/av_dataset.py lines 99-109)",
    # OGM-GE dataset/dataset.py lines 95-105, train and test alike: t[i] = seg * i + 1; 'frame_0000' + str(t[i])
    "ogm_ge": "frame number seg*i + 1 of the folder's F frames, seg = F//n (the OGM-GE loader, "
              "dataset/dataset.py lines 95-105)",
}


def official_frame_numbers(rule: str, available: int, n: int) -> list[int]:
    """The frame numbers (as in the file names) that ``rule`` (a key of :data:`FRAME_RULES`) opens."""
    seg = available // n
    if rule == "drl":
        return [i * seg + seg // 2 for i in range(n)]
    if rule == "ogm_ge":
        return [seg * i + 1 for i in range(n)]
    raise ValueError(f"unknown frame rule {rule!r}; known: {', '.join(FRAME_RULES)}")


def frame_number(path: Path) -> int | None:
    """The frame number a file name carries (its last run of digits: ``frame_00007.jpg`` -> 7), or None."""
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else None


def _resize(image: Any, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def read_image(path: str | Path, size: int, mode: str = "RGB") -> np.ndarray:
    """An image resized to size × size: uint8 [3, size, size] (RGB) or [size, size] (mode ``L``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and names itself
            array = _resize(image.convert(mode), size)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise PrepareError(f"{path}: cannot decode image ({err}); replace the file or leave the clip out") from None
    return array.transpose(2, 0, 1) if array.ndim == 3 else array


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise PrepareError(f"{path}: cannot decode image ({err}); replace the file or leave the clip out") from None


def folder_frames(folder: str | Path, n: int, size: int, rule: str | None = None) -> np.ndarray:
    """uint8 [n, 3, size, size]: n frames of a folder of images — the ones an official loader opens (``rule``, a
    key of :data:`FRAME_RULES`) where the folder has files of those numbers, else picked evenly (centres)."""
    frames = list_frames(folder)
    chosen = [frames[i] for i in pick_evenly(len(frames), n)]
    if rule is not None:
        by_number = {frame_number(p): p for p in frames}
        wanted = official_frame_numbers(rule, len(frames), n)
        if all(k in by_number for k in wanted):
            chosen = [by_number[k] for k in wanted]
    return np.stack([read_image(path, size) for path in chosen])


def video_frames(path: str | Path, n: int, size: int) -> np.ndarray:
    """uint8 [n, 3, size, size]: n frames picked evenly from a video file (decoded with PyAV)."""
    import av

    def fail(reason: str) -> PrepareError:
        return PrepareError(f"{path}: cannot decode video ({reason}); replace the file or leave the clip out")

    try:
        with av.open(str(path)) as container:  # pass 1: count frames from the packets, no decoding
            if not container.streams.video:
                raise fail("no video stream")
            total = sum(1 for packet in container.demux(video=0) if packet.size)
        if total == 0:
            raise fail("no video frames")
        wanted = pick_evenly(total, n)
        chosen: dict[int, np.ndarray] = {}
        last = None
        with av.open(str(path)) as container:  # pass 2: decode, keep only the wanted frames
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                last = frame
                if index in wanted and index not in chosen:
                    chosen[index] = _resize(frame.to_image(), size)
                if len(chosen) == len(set(wanted)):
                    break
    except PrepareError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise fail(str(err)) from None
    if last is None:
        raise fail("no frame could be decoded")
    # a stream may decode fewer frames than it has packets: stand in with the last decoded frame
    tail = _resize(last.to_image(), size)
    return np.stack([chosen.get(i, tail) for i in wanted]).transpose(0, 3, 1, 2)


def video_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a video's first stream."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise PrepareError(f"{path}: cannot decode video (no video stream)")
            ctx = container.streams.video[0].codec_context
            return int(ctx.width), int(ctx.height)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise PrepareError(f"{path}: cannot decode video ({err}); replace the file or leave the clip out") from None


def visual_frames(sources: dict[str, str], n: int, size: int, rule: str | None = None) -> np.ndarray:
    """Frames of a clip from its frame folder if it has one (``rule``: see :func:`folder_frames`), else from its
    video file (centres of equal segments: no official loader reads video)."""
    if "frames" in sources:
        return folder_frames(sources["frames"], n, size, rule)
    return video_frames(sources["video"], n, size)


def source_aspect(sources: dict[str, str]) -> float:
    """Width / height of a clip's source frames (recorded so training crops use the source geometry)."""
    if "frames" in sources:
        width, height = image_size(list_frames(sources["frames"])[0])
    else:
        width, height = video_size(sources["video"])
    return width / height


def find_file(folders: list[Path], stem: str, exts: tuple[str, ...]) -> Path | None:
    """The first ``folder/stem.ext`` that exists, trying folders then extensions in order."""
    for folder in folders:
        for ext in exts:
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def find_dir(folders: list[Path], name: str) -> Path | None:
    """The first ``folder/name`` directory that exists."""
    for folder in folders:
        candidate = folder / name
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class AVDecoder:
    """Decodes an audio-visual clip (CREMA-D, Kinetics-Sounds) into ``audio`` + ``visual`` arrays.

    A frozen dataclass so it pickles into ``prepare``'s worker processes.
    """

    frames: int
    size: int
    n_mels: int
    audio_frames: int
    sample_rate: int
    frame_rule: str | None = None  # the official loader's frames in a frame folder (FRAME_RULES); None: centres

    def __call__(self, item: Item) -> dict[str, np.ndarray]:
        audio = audio_features(item.sources["audio"], self.sample_rate, self.n_mels, self.audio_frames)
        visual = visual_frames(item.sources, self.frames, self.size, self.frame_rule)
        return {"audio": audio, "visual": visual}


def audio_visual_source(args: Any, dataset: str) -> Path:
    """``--src`` of an audio-visual dataset (CREMA-D, Kinetics-Sounds), checked with its frame counts."""
    src = Path(args.src)
    if not src.is_dir():
        raise PrepareError(f"source directory {src} does not exist (pass --src with the {dataset} folder)")
    if args.frames < 1 or args.audio_frames < 1:
        raise PrepareError("--frames and --audio-frames must be >= 1")
    return src


def audio_visual_plan(dataset: str, classes: list[str], splits: dict[str, list[Item]], args: Any,
                      preprocessing: dict[str, Any], skipped: dict[str, list[str]], *, precomputed: str,
                      frame_rule: str | None = None) -> PreparePlan:
    """The plan CREMA-D and Kinetics-Sounds share: audio as a Kaldi fbank spectrogram, visual as frames, both
    decoded by :class:`AVDecoder` from ``args`` (``--frames --size --n-mels --audio-frames --sample-rate``) and
    ``frame_rule`` (the official loader's frames of a frame folder, :data:`FRAME_RULES`).
    ``preprocessing`` holds the dataset's own manifest entries; the audio and visual ones are added here."""
    centres = "the centre of each of N equal segments of the clip"
    sampling = (f"frame folders: {FRAME_RULES[frame_rule]}, where the folder has those numbers, else {centres}; "
                f"videos: {centres}") if frame_rule else centres
    first = splits["train"][0]
    audio_kind = Path(first.sources["audio"]).suffix.lstrip(".")
    return PreparePlan(
        dataset=dataset,
        classes=classes,
        modalities={
            "audio": (ModalityKind.SPECTROGRAM, (args.audio_frames, args.n_mels)),
            "visual": (ModalityKind.FRAMES, (args.frames, 3, args.size, args.size)),
        },
        splits=splits,
        decode=AVDecoder(args.frames, args.size, args.n_mels, args.audio_frames, args.sample_rate, frame_rule),
        preprocessing={
            **preprocessing,
            "audio": audio_preprocessing(audio_kind, args.n_mels, args.sample_rate, args.audio_frames, precomputed),
            "visual": frames_preprocessing(args.frames, args.size, sampling),
            "source_aspect": source_aspect(first.sources),
            "augment": {"visual": "crop_flip"},
        },
        skipped=skipped,
    )
