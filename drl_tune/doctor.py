"""``python -m drl_tune.doctor``: does this environment run drl-tune, and if not, what one command fixes it?

    python -m drl_tune.doctor

Prints Python, the versions of the packages drl-tune needs and whether their compiled extensions load (tried in
a fresh interpreter, so a crashing library cannot take the doctor with it), the CUDA devices torch sees, the
data cache folder and its free space, and whether the installed set is the tested lock (``constraints.txt``).
Something wrong: one ``error:`` line per problem naming the mismatch and the command that fixes it, exit 2.

Why a doctor: the torch family (torch, torchvision, torchaudio) ships compiled extensions built against one torch
release, and pip installs a mismatched member without complaint (torchaudio 2.11.1 declares ``torch>=2.11`` but
needs a symbol torch 2.11.0 lacks). ``run`` and ``train`` make the same check in-process before they start
(:func:`preflight`), so a broken install stops with one line instead of a traceback from deep in an import.
This module imports nothing heavy itself: the probes run in the child interpreter (or, for the preflight, in the
caller's, which imports those libraries anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from drl_tune.ground.guard import guarded
from drl_tune.ground.paths import default_root

EXIT_BROKEN = 2
FAMILY = ("torch", "torchvision", "torchaudio")  # built together: one release's compiled ABI
# the tested lock: in a clone (the README installs editable from one), next to the package
LOCK_FILE = Path(__file__).resolve().parent.parent / "constraints.txt"
LOW_DISK_BYTES = 2 * 1024**3


# -- probes: each imports a library and runs its compiled code once; the string says what ran ----------------


def _probe_torch() -> str:
    import torch

    torch.ones(4).sum().item()  # the C++ library runs
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    count = torch.cuda.device_count() if torch.version.cuda else 0
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return f"{build}; CUDA devices: {', '.join(names) if names else 'none'}"


def _probe_torchvision() -> str:
    import torch
    from torchvision.ops import nms

    nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1.0]), 0.5)  # a compiled torchvision operator
    return "compiled ops run (nms)"


def _probe_torchaudio() -> str:
    import torch
    from torchaudio.compliance import kaldi  # importing torchaudio loads its extension

    kaldi.fbank(torch.sin(torch.arange(800.0)).unsqueeze(0), num_mel_bins=23, dither=0.0)
    return "extension loads, Kaldi fbank runs"


def _probe_av() -> str:
    import av

    av.codec.Codec("mpeg4", "w")  # the bundled FFmpeg's codec table
    return f"FFmpeg {av.ffmpeg_version_info}"


def _probe_soundfile() -> str:
    import soundfile

    return f"libsndfile {soundfile.__libsndfile_version__}"


def _probe_sklearn() -> str:
    import numpy as np
    from sklearn.cluster import KMeans

    KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.array([[0.0], [0.1], [1.0], [1.1]]))
    return "k-means runs"


def _probe_import(module: str) -> Callable[[], str]:
    def probe() -> str:
        __import__(module)
        return "imports"

    return probe


# distribution name -> probe, in import order (a member of the torch family needs torch first)
PROBES: dict[str, Callable[[], str]] = {
    "torch": _probe_torch,
    "torchvision": _probe_torchvision,
    "torchaudio": _probe_torchaudio,
    "av": _probe_av,
    "soundfile": _probe_soundfile,
    "scikit-learn": _probe_sklearn,
    "ray": _probe_import("ray.tune"),
    "optuna": _probe_import("optuna"),
    "mlflow": _probe_import("mlflow"),
}
NEEDS_TORCH = ("torchvision", "torchaudio")
PREFLIGHT = ("torch", "torchvision", "torchaudio", "av")  # what a run or a trial imports before it trains


def root_cause(err: BaseException) -> str:
    """The innermost message of an import failure, on one line: torch's ``load_library`` wraps the loader's
    ``undefined symbol: ...`` in an ``OSError`` that names only the file."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = " ".join(str(err).split()) or type(err).__name__
    symbol = re.search(r"undefined symbol: \S+", text)
    if symbol:
        return symbol.group(0)
    missing = re.search(r"(\S+): cannot open shared object file", text)
    if missing:
        return f"{missing.group(1)} is missing"
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class Probe:
    name: str
    ok: bool
    detail: str


def run_probe(name: str) -> Probe:
    try:
        return Probe(name, True, PROBES[name]())
    except Exception as err:  # noqa: BLE001 - any failure to import or run is what is being reported
        return Probe(name, False, root_cause(err))


def _child(names: list[str]) -> int:
    """In the fresh interpreter: one JSON line per probe, flushed, so a crash still leaves the earlier ones."""
    failed: set[str] = set()
    for name in names:
        if name in NEEDS_TORCH and "torch" in failed:
            probe = Probe(name, False, "not tried: torch does not load")
        else:
            probe = run_probe(name)
        if not probe.ok:
            failed.add(name)
        print(json.dumps(probe.__dict__), flush=True)
    return 0


def probe_fresh(names: list[str] | None = None, timeout: float = 180.0) -> dict[str, Probe]:
    """Every probe in one fresh interpreter (as a trial worker would start); a probe the interpreter did not live
    to report (a segfault in a library's loader) is a failure naming the signal."""
    names = list(names or PROBES)
    proc = subprocess.run([sys.executable, "-m", "drl_tune.doctor", "--probe", ",".join(names)],
                          capture_output=True, text=True, timeout=timeout, check=False)
    out: dict[str, Probe] = {}
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            out[row["name"]] = Probe(row["name"], bool(row["ok"]), str(row["detail"]))
    for name in names:
        if name not in out:
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            out[name] = Probe(name, False, f"the interpreter died loading it ({how}) {tail[0]}".strip())
            break  # the ones after it were never tried
    return out


# -- versions: installed, required by drl-tune, pinned by the lock ---------------------------------------------


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _public(version: str) -> str:
    """2.11.0+cpu and 2.11.0 are the same release (a CPU wheel of it)."""
    try:
        return Version(version).public
    except InvalidVersion:
        return version


def lock_pins(path: Path = LOCK_FILE) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of the lock; {} where there is none (a wheel install)."""
    pins: dict[str, str] = {}
    if not path.is_file():
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        with contextlib.suppress(ValueError):  # a line the lock format allows but that is no pin
            req = Requirement(line)
            spec = next(iter(req.specifier), None)
            if spec is not None and spec.operator == "==" and len(req.specifier) == 1:
                pins[canonicalize_name(req.name)] = spec.version
    return pins


def requirements() -> dict[str, Requirement]:
    """drl-tune's own runtime requirements (no extras), from its installed metadata."""
    try:
        raw = md.requires("drl-tune") or []
    except md.PackageNotFoundError:
        return {}
    out: dict[str, Requirement] = {}
    for text in raw:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out[canonicalize_name(req.name)] = req
    return out


def _pin(name: str, pins: dict[str, str], reqs: dict[str, Requirement]) -> str:
    """What to ask pip for: the lock's version, else drl-tune's range, else the bare name."""
    key = canonicalize_name(name)
    if key in pins:
        return f"'{name}=={pins[key]}'"
    if key in reqs and str(reqs[key].specifier):
        return f"'{name}{reqs[key].specifier}'"
    return f"'{name}'"


def family_fix(pins: dict[str, str], reqs: dict[str, Requirement], broken: str) -> str:
    """The pip command that brings the torch family back to the tested set: every member whose version differs
    from the lock (or the broken one reinstalled, when all already match)."""
    differ = [n for n in FAMILY if canonicalize_name(n) in pins
              and _public(installed(n) or "") != pins[canonicalize_name(n)]]
    if differ:
        return "pip install " + " ".join(_pin(n, pins, reqs) for n in differ)
    return f"pip install --force-reinstall --no-deps {_pin(broken, pins, reqs)}"


def load_problem(probe: Probe, pins: dict[str, str], reqs: dict[str, Requirement]) -> str:
    """One line: what does not load, with what, why, and the command that fixes it."""
    version = installed(probe.name)
    if version is None:
        return f"{probe.name} is not installed: pip install {_pin(probe.name, pins, reqs)}"
    if probe.name in NEEDS_TORCH:
        torch_version = installed("torch") or "no torch"
        return (f"{probe.name} {version} does not load with torch {torch_version} ({probe.detail}): "
                f"{family_fix(pins, reqs, probe.name)}")
    if probe.name == "torch":
        return f"torch {version} does not load ({probe.detail}): {family_fix(pins, reqs, 'torch')}"
    return (f"{probe.name} {version} does not load ({probe.detail}): "
            f"pip install --force-reinstall {_pin(probe.name, pins, reqs)}")


def version_problems(pins: dict[str, str], reqs: dict[str, Requirement]) -> tuple[list[str], dict[str, str]]:
    """(errors, warnings by package) from versions alone, without importing anything (milliseconds).

    An error: a required package is missing. A warning: a version outside drl-tune's range (the torch family's
    ranges exclude the combinations known not to load; whether this one loads is the probes' to say).
    """
    errors, warnings = [], {}
    for req in reqs.values():
        version = installed(req.name)
        if version is None:
            errors.append(f"{req.name} is not installed: pip install {_pin(req.name, pins, reqs)}")
        elif not req.specifier.contains(_public(version), prereleases=True):
            pin = _pin(req.name, pins, reqs)
            fix = family_fix(pins, reqs, req.name) if req.name in FAMILY else f"pip install {pin}"
            warnings[req.name] = f"{req.name} {version} is outside drl-tune's tested range {req.specifier}: {fix}"
    return errors, warnings


def _merge(errors: list[str], warnings: dict[str, str], failed: set[str]) -> tuple[list[str], list[str]]:
    """A package that does not load gets its load error only, not also a version warning."""
    return _unique(errors), [line for name, line in warnings.items() if name not in failed]


def preflight() -> tuple[list[str], list[str]]:
    """(errors, warnings) that would stop a run, checked in this process before ``run``/``train`` start.

    Costs the version lookups (milliseconds) plus importing the torch family and PyAV, which the run imports
    anyway a moment later; an error here is one line instead of a traceback from a trial.
    """
    pins, reqs = lock_pins(), requirements()
    errors, warnings = version_problems(pins, reqs)
    failed: set[str] = set()
    for name in PREFLIGHT:
        if name in NEEDS_TORCH and "torch" in failed:
            continue
        probe = run_probe(name)
        if not probe.ok:
            failed.add(name)
            errors.append(load_problem(probe, pins, reqs))
    return _merge(errors, warnings, failed)


def check_before_start() -> bool:
    """:func:`preflight` for a command about to train: warnings and errors to stderr, one line each (the full
    picture: ``python -m drl_tune.doctor``). False when the command must stop (exit :data:`EXIT_BROKEN`)."""
    errors, warnings = preflight()
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        print("(python -m drl_tune.doctor checks the whole environment)", file=sys.stderr)
    return not errors


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


# -- the report ----------------------------------------------------------------------------------------------


def _free(path: Path) -> tuple[Path, int]:
    """Free bytes where ``path`` is or will be created (its nearest existing folder)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_environment() -> tuple[list[str], list[str], list[str]]:
    """(report lines, errors, warnings) of this environment."""
    pins, reqs = lock_pins(), requirements()
    errors, warnings = version_problems(pins, reqs)
    lines = [f"Python      {platform.python_version()} ({sys.executable})"]
    if not reqs:
        warnings["drl-tune"] = "drl-tune is not installed (no metadata): pip install -e '.[dev]' -c constraints.txt"
    probes = probe_fresh()
    for name, probe in probes.items():
        version = installed(name) or "not installed"
        mark = "ok " if probe.ok else "BAD"
        detail = probe.detail.split("; CUDA devices")[0] if name == "torch" else probe.detail
        lines.append(f"{mark} {name:<13}{version:<14}{detail}")
        if not probe.ok:
            errors.append(load_problem(probe, pins, reqs))
    failed = {name for name, probe in probes.items() if not probe.ok}
    torch_probe = probes.get("torch")
    if torch_probe is not None and torch_probe.ok and "; CUDA devices: " in torch_probe.detail:
        lines.append(f"CUDA devices {torch_probe.detail.split('; CUDA devices: ')[1]}")
    root = default_root()
    where, free = _free(root)
    source = "$DRL_TUNE_DATA" if os.environ.get("DRL_TUNE_DATA") else "default; set DRL_TUNE_DATA to move it"
    lines.append(f"data cache  {root} ({source}): {free / 1024**3:.1f} GiB free on {where}")
    if free < LOW_DISK_BYTES:
        warnings["data cache"] = (f"only {free / 1024**3:.1f} GiB free for the data cache at {root}: free space "
                                  f"there or point DRL_TUNE_DATA at a larger disk")
    if pins:
        drift = []
        for key, version in sorted(pins.items()):
            have = installed(key)
            if have is not None and _public(have) != version:
                drift.append(f"{key} {have} (lock {version})")
        lines.append(f"lock        {LOCK_FILE.name}: " + (
            f"{len(drift)} installed package(s) differ: {', '.join(drift)}; the tested set: "
            f"pip install -e '.[dev]' -c {LOCK_FILE.name}" if drift else
            "every installed package it pins is at its pinned version"))
    else:
        lines.append(f"lock        no {LOCK_FILE.name} at {LOCK_FILE.parent} (not a clone): versions checked "
                     f"against drl-tune's ranges")
    return (lines, *_merge(errors, warnings, failed))


@guarded
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drl_tune.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--probe", help=argparse.SUPPRESS)  # internal: the fresh interpreter's side
    p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    args = p.parse_args(argv)
    if args.probe:
        return _child([n for n in args.probe.split(",") if n in PROBES])
    lines, errors, warnings = check_environment()
    print("drl-tune doctor")
    for line in lines:
        print(f"  {line}")
    for line in warnings:
        print(f"warning: {line}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        return EXIT_BROKEN
    print("healthy: drl-tune runs in this environment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
