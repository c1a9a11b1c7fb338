"""Data Remixing: "Improving Multimodal Learning Balance and Sufficiency through Data Remixing" (Ma, Chen & Deng,
ICML 2025) — per-sample decoupling of the modalities, reassembled into uni-modal batches.

As the official ``train.py``, ``models/models.py`` and ``datasets/dataloader.py`` (MatthewMaxy/Remix_ICML2025 at
80898aa; ``scripts/run_train.sh``):

* a separate linear uni-modal head per modality on its pooled features, besides the fused head
  (``head_audio``/``head_video``, ``models/models.py`` lines 34-36; here :meth:`extra_modules`);
* **warm-up**, epochs 0 … ``warmup`` − 1 (``train.py`` line 243): every sample with both modalities, loss =
  CE(fused) + α₁·CE(head₁(f₁)) + α₂·CE(head₂(f₂)) (``train_epoch``, line 120; ``--alpha`` audio, ``--beta`` video);
* **remixing**, every later epoch, before its training (``remix``, lines 60-99, called at line 248): the
  current model in eval mode scores every *training* sample without augmentation (``train_val_dataloader`` is
  ``AV_CD_Dataset(mode='val')``, which reads ``train.csv`` with the test-time transforms: ``dataloader.py``
  lines 31-32, 81-86, 99-100); per modality KL(p_m ‖ uniform) of the softmax of its uni-modal head, in bits,
  p clipped to ≥ 1e-9 (``kl_divergence``, lines 52-57); the sample goes to the modality whose prediction is
  *less* confident (smaller KL: ``KL_audio < KL_video`` → audio subset, otherwise, ties included, video subset;
  lines 78-81). Every sample lands in exactly one subset; the subsets are re-drawn every epoch. (The abstract's
  "filtering hard samples for each modality" is this assignment; the code has no threshold.)
* the remixing epoch trains the video subset first, then the audio subset (``special_train_epoch``, lines
  127-173), each through its own shuffled loader of ``batch_size`` (lines 137, 156), so every batch is
  uni-modal: the other modality's pooled features are set to zero after its encoder (``forward(..., mode)``,
  ``models/models.py`` lines 55-59: the zeroed encoder still runs, in train mode, and gets a zero gradient);
  loss = CE(fused on [0, f_v]) + γ₁·CE(head_v(f_v)) for a video batch, CE(fused on [f_a, 0]) + γ₂·CE(head_a(f_a))
  for an audio batch (lines 145-147, 164-166). One optimizer step per batch, so a remixing epoch has
  ⌈n_v/B⌉ + ⌈n_a/B⌉ steps.
* evaluation: the fused head (``valid``, lines 191-192; the default ``eval_logits``).

Here the engine's ``training_rows`` gives, from epoch ``warmup`` on, every training sample once with the keep
mask of its assigned modality only, the second modality's rows first; ``batch_by_keep`` makes the engine batch
each keep pattern on its own, pattern after pattern (methods/base.py), which is the official pair of loaders.
The model's first modality plays "audio", the second "video" (CREMA-D's order here, audio then visual).

Defaults are ``train.py``'s argparse defaults (lines 36, 43-46): ``warmup`` 10, α₁ = α₂ = 0.5 (``--alpha``,
``--beta``), γ₁ = γ₂ = 1 (``--gamma1`` video, ``--gamma2`` audio: here ``gamma_second`` and ``gamma_first``). The
README's one command (``scripts/run_train.sh``) is CREMA-D: ``--batch_size 64 --epoch 60 --warmup 10`` with the
other defaults: Adam, lr 5e-5, weight decay 1e-4, StepLR 30 epochs × 0.1 (lines 37-40, 233-235). There is no
Kinetics-Sounds command: the dataset class reads CREMA-D only (``dataloader.py`` lines 25-29; ``models.py``
lines 19-20 merely size a 31-class head for it). The README states no accuracy gains. Two modalities, as the
official code. Zeroing a modality's pooled features is defined for every fusion, so every fusion works (official:
concatenation, ``models.py`` lines 34, 61-62). Cost per remixing epoch: one eval-mode pass over the training set.
Nothing carries over between epochs except the model (the assignment is recomputed from it at each epoch's
start), so ``state_dict`` is empty and a resumed run is exact.

Departures from the official code: (1) the class count of the uniform distribution is the dataset's; the
official hard-codes 6 (CREMA-D, ``train.py`` lines 76-77) — KL(p ‖ uniform) = log₂C − H(p) up to the clipping, so
the assignment is the same; (2) the subsets are kept in memory, not written to ``./data/remix_a.csv`` /
``remix_v.csv`` and re-read (lines 83-97); (3) the loaders' shuffles use the engine's generator, and a batch of
one is dropped (the engine's rule; the official ``DataLoader`` keeps a last partial batch of any size); (4)
augmentation of the training batches follows the run's ``data.augment``; the official always random-crops and
flips frames in training (``dataloader.py`` lines 73-79, 172-177), while its scoring pass does not, as here;
(5) ``train/loss`` is the per-sample mean over the epoch, the official prints the mean over batches (line 173);
(6) the official ``valid`` runs on ``test.csv`` and keeps the best-on-test checkpoint (lines 221, 252-268); the
engine selects on validation only (not part of the rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, Method
from drl_tune.models import MultimodalClassifier

KL_CLIP = 1e-9  # the official kl_divergence's np.clip lower bound


@dataclass
class RemixParams:
    warmup: int = param(10, "epochs of joint warm-up before remixing starts (0-based epoch `warmup` is the first "
                        "remixed one; official `--warmup`)", ge=0)
    alpha_first: float = param(0.5, "warm-up weight of the first modality's uni-modal loss (official `--alpha`, "
                               "audio)", ge=0)
    alpha_second: float = param(0.5, "warm-up weight of the second modality's uni-modal loss (official `--beta`, "
                                "video)", ge=0)
    gamma_first: float = param(1.0, "remixing: weight of the uni-modal loss in the first modality's batches "
                               "(official `--gamma2`, audio)", ge=0)
    gamma_second: float = param(1.0, "remixing: weight of the uni-modal loss in the second modality's batches "
                                "(official `--gamma1`, video)", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "remix.")  # the numbers' domains are declared on the fields (ground/domains.py)


def kl_to_uniform(logits: np.ndarray) -> np.ndarray:
    """Per row, KL(softmax(logits) ‖ uniform) in bits with the probabilities clipped to ≥ 1e-9 (not renormalised),
    as the official ``kl_divergence``."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    p = torch.softmax(z, dim=1).clamp(KL_CLIP, 1.0)
    return (p * torch.log2(p * z.shape[1])).sum(1).numpy()


def assign(kl_first: np.ndarray, kl_second: np.ndarray) -> np.ndarray:
    """Per sample, the modality index it is trained on: 0 (the first) where its KL is strictly smaller, else 1 (the
    official ``KL_audio < KL_video`` test; ties go to the second, "video")."""
    return np.where(np.asarray(kl_first) < np.asarray(kl_second), 0, 1)


def remix_rows(assigned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The remixing epoch's rows: the second modality's samples (keep = [False, True]) first, then the first's
    (keep = [True, False]) — the official video loader before the audio loader."""
    second, first = np.flatnonzero(assigned == 1), np.flatnonzero(assigned == 0)
    rows = np.concatenate([second, first]).astype(np.int64)
    keep = np.asarray([[False, True]] * len(second) + [[True, False]] * len(first), dtype=bool).reshape(-1, 2)
    return rows, keep


class Remix(Method):
    name = "remix"
    modalities = 2  # the authors' rule assigns each sample to one of an audio-visual pair
    batch_by_keep = True  # the official uni-modal batches: one loader per modality
    Params = RemixParams
    params: RemixParams

    def __init__(self, params: RemixParams) -> None:
        super().__init__(params)
        self.rows: np.ndarray | None = None
        self.keep: np.ndarray | None = None
        self._metrics: dict[str, float] = {}

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {f"head_{m}": nn.Linear(model.feature_width(m), n_classes) for m in model.modalities}

    @torch.no_grad()
    def unimodal_kl(self, model: MultimodalClassifier, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """KL to uniform of each modality's uni-modal head on eval-mode features, per sample."""
        heads = model.method_modules
        out: dict[str, np.ndarray] = {}
        for m in model.modalities:
            head = heads[f"head_{m}"]
            device = next(head.parameters()).device
            logits = [head(torch.as_tensor(features[m][s : s + 1024], device=device)).float().cpu().numpy()
                      for s in range(0, len(features[m]), 1024)]
            out[m] = kl_to_uniform(np.concatenate(logits))
        return out

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self._metrics = {}
        if ctx.epoch < self.params.warmup:
            self.rows = self.keep = None
            return
        model.eval()
        features, _ = ctx.features("train")
        kl = self.unimodal_kl(model, features)
        first, second = model.modalities
        assigned = assign(kl[first], kl[second])
        self.rows, self.keep = remix_rows(assigned)
        self._metrics = {f"diag/remix_share_{first}": float((assigned == 0).mean()),
                         f"diag/remix_share_{second}": float((assigned == 1).mean()),
                         f"diag/kl_{first}": float(kl[first].mean()), f"diag/kl_{second}": float(kl[second].mean())}

    def training_rows(self, n_train: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.rows is None:
            return np.arange(n_train), None
        return self.rows, self.keep

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        modified = self.encoded(model, batch)  # modify_features zeroes what batch.keep masks out
        if modified is None:
            return None
        features, labels = modified
        heads = model.method_modules
        total = F.cross_entropy(model.fuse(features), labels)
        for i, m in enumerate(model.modalities):
            per_row = F.cross_entropy(heads[f"head_{m}"](features[m]), labels, reduction="none")
            if batch.keep is None:  # warm-up: every row trains both heads
                weight = (self.params.alpha_first, self.params.alpha_second)[i]
                total = total + weight * per_row.mean()
            else:  # remixing: only the rows that keep m train its head (a batch is one modality's)
                weight = (self.params.gamma_first, self.params.gamma_second)[i]
                total = total + weight * (per_row * batch.keep[:, i].to(per_row.dtype)).mean()
        if not torch.isfinite(total):
            return total.detach()  # the engine stops the run with a clear error
        total.backward()
        return total.detach()

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict[str, Any]:
        return {}  # the assignment is recomputed from the model at every epoch's start

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = self.keep = None
