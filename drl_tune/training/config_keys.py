"""Every configuration key with its default and its meaning — the one source of the docs' "Configuration keys"
table and of the key listing in ``python -m drl_tune.train --help`` and ``python -m drl_tune.run --help``.

The defaults are read from the typed configuration itself (``make_config({})``), the meanings from
:data:`KEY_DOCS` and, for a method's keys, from its ``Params`` fields (``param(default, meaning, ...)`` in the
method's own file); a key without a meaning, or a meaning for a key that no longer exists, fails the tests
(``tests/training/test_config_keys.py``, which also checks that the table in docs/configuration.md is this module's
output). Print that table with ``python -m drl_tune.training.config_keys --markdown``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
import typing
from typing import Any

from drl_tune.ground.domains import CHOICES, DOC, Domain, domain_of
from drl_tune.methods import REGISTRY
from drl_tune.training.config import TrainConfig, make_config

HELP_WIDTH = 100

# (keys, meaning): keys comma-separated; ``block.*`` = every key of that block. Backticks are for the docs.
KEY_DOCS: list[tuple[str, str]] = [
    ("method", "a registered method: `joint`, `drl`, `ogm_ge`, `opm`, `mmpareto`, `inforeg`, `valuation`, "
               "`mmcosine`, `cml`, `pmr`, `agm`, `mla`, `reconboost`, `umt`, `gblending` (see \"Comparator methods\")"),
    ("epochs, lr, optimizer, momentum, weight_decay, batch_size",
     "the official CREMA-D settings; `optimizer` is `sgd` or `adam`"),
    ("fusion", "`concat`, `sum`, `film`, `gated`"),
    ("seed, device, threads", "the run's seed; `auto`, `cpu`, `cuda` or `cuda:N`; torch threads (0 = torch's "
                              "default; a study uses its CPUs per trial)"),
    ("model.width", "ResNet18 base channels (64 = the paper)"),
    ("model.feature_hidden, model.feature_layers", "width (= pooled feature dimension) and depth of the encoder of "
                                                   "every precomputed-feature modality (MLP or temporal model)"),
    ("model.sequence_encoder, model.feature_heads", "a feature sequence's temporal model: `conv` (1-D convolutions) "
                                                    "or `transformer` (torch.nn.TransformerEncoder, with these "
                                                    "attention heads)"),
    ("data.name, data.root, data.augment", "dataset, where its prepared cache is (\"\" = the user cache directory), "
                                           "batch-wise random crop and flip of frames"),
    ("data.modalities", "train on these modalities only (e.g. `visual`; empty = all of the dataset's)"),
    ("data.synthetic.*", "the demo data's knobs (\"The demo data\"): split sizes, classes, seed, audio SNR (dB), "
                         "share of training clips with the identity cue (`audio_shortcut`), of clips with a random "
                         "class's tone / shape (`*_confusion`), pixel noise, frames, image size, `noise_only` "
                         "(`audio`/`visual`: that modality pure noise)"),
    ("data.avdigits.*", "AV-digits knobs: `seed`, `n_images` (0 = all), `languages`, `speakers_train/val/test` "
                        "(per language), `audio_snr_db`, `visual_noise`, `visual_shift`, `frames`, `image_size`"),
    ("eval.probe_samples", "training samples the uni-modal linear probe is fitted on"),
    ("eval.batch_size", "batch size of evaluation and feature extraction"),
    ("perf.bf16, perf.channels_last, perf.pin_memory, perf.gpu_augment, perf.compile",
     "the GPU path (`drl_tune/training/accel.py`, \"Performance\"): bf16 autocast of the encoders, NHWC weights, "
     "pinned non-blocking batch copies, crop/flip/normalise on the GPU, `torch.compile` of the encoders. They act only "
     "on a CUDA device (a CPU run is identical with them on or off); set one false to rule it out"),
]


def format_default(value: Any) -> str:
    """A default as it is written after ``--set KEY=``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "[]"
    return '""' if value == "" else str(value)


def method_docs() -> list[tuple[str, str]]:
    """(key, meaning) of every registered method's parameters, in registry and field order, read off each method's
    ``Params`` fields (``ground.domains.param``): a method's file is where its keys are described."""
    out = []
    for name, method in REGISTRY.items():
        for f in dataclasses.fields(method.Params):
            doc = f.metadata.get(DOC)
            if not doc:
                raise KeyError(f"{name}.{f.name} has no description: declare it with param(default, \"what it "
                               f"means\", ...) in {method.__module__}")
            out.append((f"{name}.{f.name}", doc))
    return out


def rows() -> list[tuple[str, list[tuple[str, Any]], str]]:
    """(keys as written in :data:`KEY_DOCS` or one method key, [(key, default)], meaning), every configuration key
    exactly once."""
    defaults = make_config({}).to_flat()
    out: list[tuple[str, list[tuple[str, Any]], str]] = []
    seen: set[str] = set()
    for keys, meaning in [*KEY_DOCS, *method_docs()]:
        found = []
        for pattern in (k.strip() for k in keys.split(",")):
            if pattern.endswith(".*"):
                match = [k for k in defaults if k.startswith(pattern[:-1])]
            else:
                match = [pattern] if pattern in defaults else []
            if not match:
                raise KeyError(f"config_keys.KEY_DOCS names {pattern!r}, which is not a configuration key")
            found += [(k, defaults[k]) for k in match]
        seen.update(k for k, _ in found)
        out.append((keys, found, meaning))
    missing = [k for k in defaults if k not in seen]
    if missing:
        raise KeyError(f"configuration keys without a meaning in config_keys.KEY_DOCS: {', '.join(missing)}")
    return out


def key_domain(key: str) -> Domain | None:
    """The declared domain of a flat configuration key (``lr``, ``data.synthetic.n_train``, ``drl.lam``)."""
    parts = key.split(".")
    if parts[0] in REGISTRY:
        cls: Any = REGISTRY[parts[0]].Params
        parts = parts[1:]
    else:
        cls = TrainConfig
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return domain_of(cls, parts[-1])


def key_choices(key: str) -> tuple[str, ...] | None:
    """The values a method's text key may take (its ``param(..., choices=...)``), or None."""
    method, _, name = key.partition(".")
    if method not in REGISTRY:
        return None
    field = next(f for f in dataclasses.fields(REGISTRY[method].Params) if f.name == name)
    return field.metadata.get(CHOICES)


def markdown_table() -> str:
    """The docs' "Configuration keys" table, with each number's allowed values (its declared domain; every number
    must also be finite)."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for keys, found, meaning in rows():
        names = ", ".join(f"`{k.strip()}`" for k in keys.split(","))
        if keys.endswith(".*"):
            default = ", ".join(f"{k.rsplit('.', 1)[1]}={format_default(v)}" for k, v in found)
        else:
            default = ", ".join(format_default(v) for _, v in found)
        domains = [(k, key_domain(k)) for k, _ in found]
        shown = [(k, d.short()) for k, d in domains if d is not None and d.short() != "a finite number"]
        shown += [(k, " / ".join(c)) for k, _ in found if (c := key_choices(k))]
        allowed = shown[0][1] if len(found) == 1 and shown else ", ".join(
            f"{k.rsplit('.', 1)[1] if keys.endswith('.*') else k} {text}" for k, text in shown)
        lines.append(f"| {names} | {default} | {allowed or ''} | {meaning} |")
    return "\n".join(lines)


def help_text() -> str:
    """The key listing of ``--help``: every key with its default, then what it means."""
    lines = ["configuration keys (--set KEY=VALUE), each with its built-in default (a space file's fixed and "
             "defaults blocks may set others):"]
    for _, found, meaning in rows():
        lines.append(textwrap.fill("  ".join(f"{k}={format_default(v)}" for k, v in found), HELP_WIDTH,
                                   initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False))
        lines.append(textwrap.fill(re.sub(r"`([^`]*)`", r"\1", meaning), HELP_WIDTH, initial_indent="      ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drl_tune.training.config_keys", description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", action="store_true", help="print the docs table instead of the --help listing")
    args = p.parse_args(argv)
    print(markdown_table() if args.markdown else help_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
