"""One run without Ray, on the same engine the study uses — for trying or debugging a configuration.

    python -m drl_tune.train --space demo --set method=drl --set epochs=6 --set drl.diagnosis_interval=2

Prints one line per epoch and writes ``OUT/metrics.jsonl`` (one JSON object per epoch),
``OUT/config.json`` and ``OUT/checkpoint.pt`` (every epoch; ``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from drl_tune.data.cache import CacheError
from drl_tune.doctor import EXIT_BROKEN, check_before_start
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.guard import exit_command, guarded
from drl_tune.ground.io import atomic_write_json
from drl_tune.ground.paths import check_writable
from drl_tune.methods.user import use_methods
from drl_tune.study.spaces import load_space
from drl_tune.training.config import parse_assignments
from drl_tune.training.config_keys import help_text
from drl_tune.training.engine import Engine


def format_epoch(m: dict[str, float], epochs: int, modalities: list[str]) -> str:
    """One human line per epoch."""
    uni = " ".join(f"{mod} {m[f'val/acc_{mod}']:.3f}" for mod in modalities)
    line = (
        f"epoch {int(m['epoch']):3d}/{epochs}  loss {m['train/loss']:.4f}  val {m['val/acc']:.3f} "
        f"(best {m['val/acc_best']:.3f})  test@best {m['test/acc_at_best_val']:.3f}  "
        f"probe: {uni}  gap {m['balance/gap']:.3f}  {m['time/epoch_s']:.2f}s"
    )
    alphas = {mod: m[f"diag/alpha_{mod}"] for mod in modalities if f"diag/alpha_{mod}" in m}
    if alphas:
        line += "  re-init α " + " ".join(f"{mod} {a:.3f}" for mod, a in alphas.items())
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drl_tune.train", description=__doc__.split("\n\n")[0],
                                epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="demo", help="search space name or path to a .yaml file (default: demo)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set method=drl --set drl.lam=2 (repeatable)")
    p.add_argument("--methods-from", action="append", default=[], metavar="FILE",
                   help="register the Method subclasses of this .py file (your own method; repeatable)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/train-<method>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    return p.parse_args(argv)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not check_before_start():  # a torch family that does not load: one line, not a traceback
        return EXIT_BROKEN
    try:
        use_methods(args.methods_from)  # before the space: its methods and keys must be known
        space = load_space(args.space)
        config = space.config(parse_assignments(args.assignments))
        out = args.out or Path("runs") / f"train-{config.method}-s{config.seed}"
        check_writable(out, "--out")  # before the dataset is loaded or anything is written
        checkpoint = out / "checkpoint.pt"
        if args.resume and not checkpoint.is_file():
            raise ConfigError(f"--resume: no checkpoint at {checkpoint}")
        engine = Engine(config)
        if args.resume:
            engine.load(checkpoint)
    except (ConfigError, CacheError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        print(f"resumed from {checkpoint} at epoch {engine.epoch}")
    atomic_write_json(out / "config.json", config.to_flat())
    mode = "a" if args.resume else "w"
    with open(out / "metrics.jsonl", mode) as log:
        while not engine.done:
            metrics = engine.run_epoch()
            log.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in metrics.items()}) + "\n")
            log.flush()
            engine.save(checkpoint)
            if not args.quiet:
                print(format_epoch(metrics, config.epochs, engine.model.modalities), flush=True)
    best = engine.best
    print(f"done: best val acc {best['val/acc_best']:.4f} at epoch {int(best['best_epoch'])}, "
          f"test acc there {best['test/acc_at_best_val']:.4f}; metrics in {out / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    exit_command(main())
