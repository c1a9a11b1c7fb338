"""``python -m drl_tune.data.prepare DATASET --src RAW_DIR --out CACHE_DIR``: raw files → the cache, once.

DATASET is ``cremad``, ``kinetics_sounds``, ``ucf101`` or ``manifest`` (your own data: ``--manifest FILE`` instead
of ``--src``, drl_tune/data/manifest.py); ``python -m drl_tune.data.prepare DATASET -h`` lists its options. The
whole source is checked (split lists, labels, every listed clip present) before anything is decoded; clips are
then decoded in ``--workers`` processes and streamed into the cache, which appears at ``--out`` only when complete
(an interrupted or failed run leaves nothing that loads). Any bad input stops the run with ``error: ...`` naming
the file, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

from drl_tune.data import cremad, kinetics_sounds, manifest, ucf101
from drl_tune.data.cache import CacheError, CacheWriter, load_cache
from drl_tune.data.sources import Item, PrepareError, PreparePlan
from drl_tune.ground.domains import Domain, flag
from drl_tune.ground.guard import guarded
from drl_tune.ground.paths import PathError, check_writable, default_root

PREPARERS: dict[str, ModuleType] = {"cremad": cremad, "kinetics_sounds": kinetics_sounds, "ucf101": ucf101,
                                     "manifest": manifest}
# the flags' domains (ground/domains.py, as every command's): a bad number is one argparse line, not a traceback
SIZE = flag(Domain(ge=8), integer=True)
MELS = flag(Domain(ge=1), integer=True)
SEED = flag(Domain(ge=0, le=2**32 - 1), integer=True)
WORKERS = flag(Domain(ge=0, le=256), integer=True)


def default_out(name: str) -> Path:
    """Where the dataset loader looks when ``data.root`` is not set."""
    return Path(os.environ.get(f"DRL_TUNE_{name.upper()}_ROOT") or default_root() / name)


def _check_out(out: Path, force: bool) -> None:
    """Never replace something that is not a cache, nor a cache without --force."""
    if out.is_file():
        raise PrepareError(f"--out {out} is a file; give a directory for the cache")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise PrepareError(f"--out {out} exists and is not a prepared cache; give an empty or new directory")
        if not force:
            raise PrepareError(f"--out {out} already holds a prepared cache; pass --force to replace it")


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _decoded(plan: PreparePlan, items: list[Item], workers: int) -> Iterator[dict[str, np.ndarray]]:
    """Decoded samples in item order, in ``workers`` processes (0 = in this process)."""
    if workers <= 0:
        yield from map(plan.decode, items)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        try:
            yield from pool.map(plan.decode, items, chunksize=4)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def build_cache(plan: PreparePlan, out: str | os.PathLike, workers: int = 0, progress: bool = True,
                force: bool = False) -> Path:
    """Decode every item of ``plan`` into a new cache at ``out`` (atomic) and return its path. tqdm is imported
    only for the progress bar: ``--quiet`` runs where it is not installed (the GPU benchmark's machines)."""
    out = Path(out)
    _check_out(out, force)
    preprocessing = dict(plan.preprocessing)
    preprocessing["skipped_missing"] = {split: len(clips) for split, clips in plan.skipped.items()}
    order = [(split, index, item) for split, items in plan.splits.items() for index, item in enumerate(items)]
    progress_bar: Any = contextlib.nullcontext(SimpleNamespace(update=lambda: None))
    if progress:
        from tqdm import tqdm

        progress_bar = tqdm(total=len(order), desc=f"prepare {plan.dataset}", unit="clip", file=sys.stderr)
    with CacheWriter(out, plan.dataset, plan.classes, plan.modalities, preprocessing) as writer, progress_bar as bar:
        for split, items in plan.splits.items():
            writer.add_split(split, len(items))
        for (split, index, item), sample in zip(order, _decoded(plan, [o[2] for o in order], workers), strict=True):
            writer.write(split, index, sample, item.label, item.clip_id)
            bar.update()
    return out


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m drl_tune.data.prepare",
        description="Prepare a dataset's cache (memory-mapped arrays + manifest) from its raw files.",
    )
    sub = main.add_subparsers(dest="dataset", required=True, metavar="DATASET", help=", ".join(PREPARERS))
    for name, module in PREPARERS.items():
        p = sub.add_parser(name, help=(module.__doc__ or "").splitlines()[0], description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if getattr(module, "NEEDS_SRC", True):
            p.add_argument("--src", type=Path, required=True, help="the raw dataset folder")
        p.add_argument("--out", type=Path, help=f"cache folder (default: $DRL_TUNE_{name.upper()}_ROOT or "
                       f"$DRL_TUNE_DATA/{name}, where the loader looks)")
        p.add_argument("--skip-missing", action="store_true",
                       help="leave out clips whose files are missing (default: stop) and report how many")
        p.add_argument("--size", type=SIZE, default=224, help="frame side at the training resolution (224)")
        p.add_argument("--n-mels", type=MELS, default=128, help="mel bins (128)")
        p.add_argument("--seed", type=SEED, default=0, help="seed of generated splits (0)")
        p.add_argument("--workers", type=WORKERS, default=min(8, os.cpu_count() or 1),
                       help="decoding processes (default: CPUs, at most 8; 0 = in this process)")
        p.add_argument("--force", action="store_true", help="replace an existing cache at --out")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
        module.add_arguments(p)
    return main


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out) if args.out is not None else default_out(args.dataset)
    try:
        check_writable(out, "--out")
        plan = PREPARERS[args.dataset].make_plan(args)
        sizes = ", ".join(f"{split} {len(items)}" for split, items in plan.splits.items())
        print(f"{args.dataset}: {len(plan.classes)} classes, {sizes}", file=sys.stderr)
        if plan.n_skipped:
            per_split = ", ".join(f"{split} {len(clips)}" for split, clips in plan.skipped.items())
            print(f"skipped {plan.n_skipped} clips with missing files ({per_split}), e.g. "
                  f"{next(iter(plan.skipped.values()))[0]}", file=sys.stderr)
        build_cache(plan, out, workers=args.workers, progress=not args.quiet, force=args.force)
        data = load_cache(out)  # prove it loads
    except (CacheError, OSError, PathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no cache was written", file=sys.stderr)
        return 130
    total = sum(len(s) for s in data.splits.values())
    print(f"wrote {total} clips to {out}", file=sys.stderr)
    print(f"train with: --set data.root={out}   (or export DRL_TUNE_{args.dataset.upper()}_ROOT={out})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
