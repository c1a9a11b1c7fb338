"""Every configuration key with its default and its meaning — the one source of the docs' "Configuration keys"
table and of the key listing in ``python -m drl_tune.train --help`` and ``python -m drl_tune.run --help``.

The defaults are read from the typed configuration itself (``make_config({})``), the meanings from
:data:`KEY_DOCS`; a key without a meaning, or a meaning for a key that no longer exists, fails the tests
(``tests/test_config_keys.py``, which also checks that the table in docs/configuration.md is this module's
output). Print that table with ``python -m drl_tune.training.config_keys --markdown``.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import typing
from typing import Any

from drl_tune.ground.domains import Domain, domain_of
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
    ("drl.alpha", "λ of the paper (`move_lambda` in the official code): the re-init strength α = tanh(λ·gap) is "
                  "what `diag/alpha_<m>` logs"),
    ("drl.diagnosis_interval", "diagnose and re-learn after epochs k, 2k, … (0-based epoch index, as the official "
                               "code)"),
    ("drl.max_reinits", "at most this many re-initialisations"),
    ("drl.n_clusters", "k of k-means; null = number of classes"),
    ("drl.blend_bn_stats, drl.reset_momentum", "widen the re-init to BN running stats / optimizer momentum (the "
                                               "official code does neither)"),
    ("drl.kmeans_seed", "`official`: k-means `random_state=0` in every run, as the paper's code (`code/ours.py`); "
                        "`trial`: the run's `seed`. The default is the official one, so that trials differing only "
                        "in `seed` diagnose identical features identically"),
    ("drl.kmeans_n_init", "k-means starts per clustering (best inertia kept); 1 = the official "
                          "`KMeans(random_state=0)` under sklearn ≥ 1.4 (10 under older sklearn); searchable"),
    ("drl.stability_restarts", "R further k-means starts at every diagnosis, on the same features, that only "
                               "*measure* how much α depends on the start (`diag/alpha_std_<m>` …); never change "
                               "the applied α; 0 = off. Each costs ~5% of a demo diagnosis, so 2 stay ≤ 10% "
                               "(\"The diagnosis' noise\")"),
    ("drl.kmeans_backend", "`torch`: the same k-means (greedy k-means++, Lloyd) in torch on the run's device "
                           "(\"Diagnosis speed\")"),
    ("ogm_ge.alpha", "α of OGM-GE's coefficient 1 − tanh(α·ratio) (the OGM-GE README's example)"),
    ("ogm_ge.modulation_starts, ogm_ge.modulation_ends", "modulate while starts ≤ epoch ≤ ends"),
    ("ogm_ge.ge", "add the generalisation-enhancement noise (false = plain OGM)"),
    ("opm.q_base, opm.lam, opm.p_exe", "OPM's base drop probability, λ, probability a batch is modulated "
                                       "(`train_opm.sh`)"),
    ("opm.warmup_epochs", "no dropping while epoch ≤ this (official `warm_up`)"),
    ("opm.theta_grad", "`official`: θ's gradient as the authors' code (adds ∇(θ²/2) to the encoders); `none`: θ "
                       "a constant, as the paper's equations"),
    ("mmpareto.gamma", "γ that scales the encoders' recombined gradients"),
    ("inforeg.threshold", "K: the prime learning window is k > K"),
    ("inforeg.beta_first, inforeg.beta_second", "β scales of the first (\"audio\") and second (\"visual\") "
                                                "modality"),
    ("inforeg.window, inforeg.trace_modality", "trace window in epochs; whose encoder's trace gives k (\"\" = the "
                                               "first modality)"),
    ("valuation.level", "`sample` or `modality` re-sampling"),
    ("valuation.warmup", "re-sampled training set rebuilt from epoch warmup − 1 on"),
    ("valuation.part_ratio, valuation.alpha", "modality level: share of samples valued, scale of the number of "
                                              "copies"),
    ("mmcosine.scale", "s: the scale of MMCosine's cosine logits (official `--scaling`)"),
    ("cml.beta", "β: the calibration penalty's weight is β/100 (0 switches it off; the CML README's run uses 10)"),
    ("cml.epsilon", "ε: tolerance margin inside the penalty's hinge"),
    ("cml.ce", "`chain`: cross-entropy averaged over the nested chain of inputs (official); `full`: of the full "
               "input only"),
    ("cml.inner_steps", "optimizer steps per batch on the batch's one draw of the removal chain (official 5: "
                        "`miwae/train.py`'s stage 2); 1: one step per batch"),
    ("pmr.alpha, pmr.momentum", "α: weight of the weaker modality's prototype cross-entropy; μ: share of the "
                                "previous prototypes in each update"),
    ("pmr.modulation_starts, pmr.modulation_ends", "the prototype term acts while starts ≤ epoch ≤ ends"),
    ("agm.alpha", "α of AGM's coefficient exp(α·min(reference − ratio, 10))"),
    ("agm.modulation_starts, agm.modulation_ends", "coefficients updated while starts ≤ epoch ≤ ends (0-based; the "
                                                   "last ones stay in force after)"),
    ("mla.gating", "MLA's fusion at evaluation: `batch` (official `--dynamic`: entropies of softmax over each "
                   "evaluation batch's samples), `classes` (the commented-out official `dim=1`: over each sample's "
                   "classes, still summed over the batch), `sample` (ours: one weight per sample), `fixed` (official "
                   "fixed weights in modality order: 0.55/0.45, or 0.35/0.25/0.4 for three; other counts refused), "
                   "`equal` (ours: 1/M each)"),
    ("mla.projection", "`official`: the shared head's gradient is never projected (the official gate "
                       "`n == \"module.weight\"` never matches); `applied`: the projection that gate was written for, "
                       "as the official lines compute it (element-wise division by α + k·r); `rank_one` (ours): the "
                       "same with the scalar α + r·k"),
    ("mla.momentum_all", "true (official, torch 1.8.1's zero_grad): a later modality's step in the batch also moves "
                         "the earlier modalities by momentum and weight decay; false: only what its loss reached"),
    ("reconboost.weight1, reconboost.weight2", "w₁, w₂ of the boosting loss (1/C)·(−w₁ + w₂·q_y)·log p_y"),
    ("reconboost.alpha, reconboost.ga_grad", "weight of the `ga_loss` MSE to the previous stage's learner; whether "
                                             "its gradient reaches the learner (false: detached, as official)"),
    ("reconboost.epochs_per_stage, reconboost.correct_epoch", "boosting epochs, then global-rectification epochs, "
                                                              "of each stage"),
    ("reconboost.boost_rate", "initial β of the ensemble β·Σ_m H(h_m) (trained in rectification)"),
    ("umt.distill", "s: weight of Σ_m MSE(student features, teacher features)"),
    ("umt.teacher_epochs", "epochs each uni-modal teacher trains before the first epoch (0 = `epochs`); the stage "
                           "costs about this many multimodal epochs (`diag/teacher_epochs`)"),
    ("gblending.super_epoch", "K: nested epochs per weight estimate, and (online) epochs between estimates; an "
                              "estimate costs (M + 1)·K nested epochs on the held-out split's rest "
                              "(`diag/blend_epochs`)"),
    ("gblending.mode", "`online`: re-estimate every K epochs; `offline`: once, before epoch 0"),
    ("gblending.holdout", "share of the *training* split held out as V′ for the estimates (never val or test)"),
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


def rows() -> list[tuple[str, list[tuple[str, Any]], str]]:
    """(keys as written in :data:`KEY_DOCS`, [(key, default)], meaning), every configuration key exactly once."""
    defaults = make_config({}).to_flat()
    out: list[tuple[str, list[tuple[str, Any]], str]] = []
    seen: set[str] = set()
    for keys, meaning in KEY_DOCS:
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
    """The declared domain of a flat configuration key (``lr``, ``data.synthetic.n_train``, ``drl.alpha``)."""
    parts = key.split(".")
    if parts[0] in REGISTRY:
        cls: Any = REGISTRY[parts[0]].Params
        parts = parts[1:]
    else:
        cls = TrainConfig
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return domain_of(cls, parts[-1])


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
