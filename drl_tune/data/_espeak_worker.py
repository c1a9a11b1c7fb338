"""Synthesise utterances with eSpeak NG (through ``ctypes``) in a fresh process; used by data/avdigits.py.

    python _espeak_worker.py OUT.npz < request.json

``request.json``: ``{"library": PATH, "data_path": PATH, "utterances": [[voice, text, pitch, rate], ...]}``.
Writes ``OUT.npz`` with ``samples`` (int16, all utterances concatenated), ``lengths`` (int64) and
``sample_rate``. A voice eSpeak NG does not know: one line on stderr, exit status 2.

Why a separate process: eSpeak NG keeps synthesis state in library globals that ``espeak_Terminate`` /
``espeak_Initialize`` do not reset (the same text comes out slightly different the second time in a
process, even after ``espeak_ng_SetRandSeed``), while a fresh process given the same sequence of requests
produces the same samples bit for bit. Standalone on purpose (numpy and ctypes only): nothing of drl_tune
or torch is imported here, so the process starts in a fraction of a second.
"""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3  # espeak_PARAMETER values (speak_lib.h)


def synthesise(library: str, data_path: str, utterances: list[list]) -> tuple[np.ndarray, np.ndarray, int]:
    lib = ctypes.cdll.LoadLibrary(library)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if sample_rate <= 0:
        raise RuntimeError(f"eSpeak NG failed to initialise with its data at {data_path}")
    chunks: list[np.ndarray] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def callback(wav, n, events):  # noqa: ANN001 - called by the library with 16-bit samples
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    lib.espeak_SetSynthCallback(callback)
    lib.espeak_ng_SetRandSeed(0)  # its noise sources (whisper, breath) start from a fixed state
    waves, lengths = [], []
    for voice, text, pitch, rate in utterances:
        if lib.espeak_SetVoiceByName(str(voice).encode()) != 0:
            raise LookupError(f"eSpeak NG has no voice {voice!r}")
        lib.espeak_SetParameter(ESPEAK_PITCH, int(pitch), 0)
        lib.espeak_SetParameter(ESPEAK_RATE, int(rate), 0)
        chunks.clear()
        encoded = str(text).encode()
        lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, 0, None, None)
        lib.espeak_Synchronize()
        wave = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        waves.append(wave)
        lengths.append(len(wave))
    samples = np.concatenate(waves) if waves else np.zeros(0, np.int16)
    return samples.astype(np.int16), np.asarray(lengths, dtype=np.int64), int(sample_rate)


def main() -> int:
    request = json.load(sys.stdin)
    try:
        samples, lengths, sample_rate = synthesise(request["library"], request["data_path"], request["utterances"])
    except (LookupError, RuntimeError, OSError) as err:
        print(err, file=sys.stderr)
        return 2
    np.savez(sys.argv[1], samples=samples, lengths=lengths, sample_rate=np.int64(sample_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
