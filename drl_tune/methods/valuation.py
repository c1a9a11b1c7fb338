"""Modality valuation: "Enhancing multimodal cooperation via sample-level modality valuation"
(Wei, Feng, Wang & Hu, CVPR 2024), sample- and modality-level re-sampling.

As the official ``code/sample_level.py``, ``code/modality_level.py`` and ``code/datasets/dataloader.py``
(GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation), after every epoch (eval mode, training split, no
augmentation):

* value v(S) = |S|·1[prediction from S correct]; the uni-modal prediction of modality a is the fused head
  with the *other* modality's features zeroed (full bias: ``exec_drop``); so the Shapley value is
  φ_a = (c_a + 2·c_all − c_v)/2 ∈ {−0.5, 0, 0.5, 1, 1.5} (and φ_v symmetrically);
* from epoch ``warmup − 1`` on, the next epoch's training set is rebuilt: every sample once, plus copies —
  **sample level**: φ_m in (0.4, 1) adds 1 copy, (−0.1, 0.4] adds 2, ≤ −0.1 adds 3, ≥ 1 none, each copy
  with the *other* modality zeroed (so the low-contribution modality must carry it);
  **modality level**: φ averaged over a random ``part_ratio`` (20%) subset drawn with replacement,
  gap_m = 1 − mean φ_m, then int(N·|gap_a − gap_v|·2/3·α) random samples (with replacement) are added
  with the stronger modality (smaller gap) zeroed.
* training itself is plain cross-entropy on the fused logits (zeroed features in the copies).

Works with every fusion (zeroing a modality's features is defined for all of them; for concat it is the
official computation). Two modalities, as the official code.

Departures from the official code: (1) its scripts pass a ``loader`` argument its dataset classes do not
take, and ``args.dynamic``/``args.method``, which do not exist, to the checkpoint name — this implements what
they evidently intend; (2) the thresholds are written on the closed intervals the issue states; on the
five values φ can take they select the same copy counts as the official open intervals; (3) random
choices use torch's global generator (checkpointed by the engine) instead of NumPy's global one; (4) the
modality-level subset has ``max(int(N·part_ratio), 1)`` samples: the official ``execute_modulation``
(``code/modality_level.py`` at 7ed12b0) takes ``num = int(len(dataloader.dataset) * args.part_ratio)`` and
then divides by it (``part_cona /= num``), a division by zero when N·part_ratio < 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import EpochContext, Method
from drl_tune.models import MultimodalClassifier


@dataclass
class ValuationParams:
    level: str = param("sample", "`sample` or `modality` re-sampling", choices=("sample", "modality"))
    warmup: int = param(5, "re-sampled training set rebuilt from epoch warmup − 1 on (used from epoch warmup)", ge=1)
    part_ratio: float = param(0.2, "modality level: share of the training set averaged for φ", gt=0, le=1)
    alpha: float = param(1.0, "modality level: scale of the number of re-sampled copies", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "valuation.")  # the numbers' domains are declared on the fields (ground/domains.py)


def shapley_values(
    correct_a: np.ndarray, correct_v: np.ndarray, correct_all: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(φ_a, φ_v) per sample for v(S) = |S|·1[S correct] over two players."""
    ca, cv, call = (np.asarray(x, dtype=np.float64) for x in (correct_a, correct_v, correct_all))
    return (ca + 2.0 * call - cv) / 2.0, (cv + 2.0 * call - ca) / 2.0


def copies_for(phi: float) -> int:
    """Extra copies of a sample whose modality has contribution φ (sample level)."""
    if phi >= 1.0:
        return 0
    if phi > 0.4:
        return 1
    if phi > -0.1:
        return 2
    return 3


def sample_level_rows(phi_a: np.ndarray, phi_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every sample once (both kept), then per sample its copies: for low φ_a with the visual zeroed
    (keep = [True, False]), for low φ_v with the audio zeroed — the official row order."""
    n = len(phi_a)
    rows, keep = list(range(n)), [[True, True]] * n
    for i in range(n):
        c_a, c_v = copies_for(float(phi_a[i])), copies_for(float(phi_v[i]))
        rows += [i] * c_a + [i] * c_v
        keep += [[True, False]] * c_a + [[False, True]] * c_v
    return np.asarray(rows, dtype=np.int64), np.asarray(keep, dtype=bool)


def modality_level_rows(
    phi_a: np.ndarray, phi_v: np.ndarray, part_ratio: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rows of the modality-level re-sampling, and the subset means (mean φ_a, mean φ_v)."""
    n = len(phi_a)
    num = max(int(n * part_ratio), 1)
    subset = torch.randint(0, n, (num,)).numpy()
    part_a, part_v = float(phi_a[subset].mean()), float(phi_v[subset].mean())
    gap_a, gap_v = 1.0 - part_a, 1.0 - part_v
    resample = int(abs(gap_a - gap_v) / 3 * 2 * alpha * n)
    extra = torch.randint(0, n, (resample,)).numpy() if resample else np.zeros(0, dtype=np.int64)
    zero_visual = gap_a > gap_v  # audio contributes less: train it alone on the copies
    copy_keep = [True, False] if zero_visual else [False, True]
    rows = np.concatenate([np.arange(n), extra]).astype(np.int64)
    keep = np.asarray([[True, True]] * n + [copy_keep] * len(extra), dtype=bool).reshape(-1, 2)
    return rows, keep, part_a, part_v


class Valuation(Method):
    name = "valuation"
    modalities = 2  # the authors' rule compares an audio-visual pair
    Params = ValuationParams
    params: ValuationParams

    def __init__(self, params: ValuationParams) -> None:
        super().__init__(params)
        self.rows: np.ndarray | None = None
        self.keep: np.ndarray | None = None

    def training_rows(self, n_train: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.rows is None:
            return np.arange(n_train), None
        return self.rows, self.keep

    @torch.no_grad()
    def valuate(self, model: MultimodalClassifier, features: dict[str, np.ndarray], labels: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """(φ_a, φ_v) of every training sample from its eval-mode features."""
        model.eval()
        first, second = model.modalities
        device = next(model.parameters()).device
        preds: dict[str, list[np.ndarray]] = {"all": [], first: [], second: []}
        for start in range(0, len(labels), 1024):
            f = {m: torch.as_tensor(features[m][start : start + 1024], device=device) for m in model.modalities}
            zero = {m: torch.zeros_like(x) for m, x in f.items()}
            preds["all"].append(model.fuse(f).argmax(1).cpu().numpy())
            preds[first].append(model.fuse({first: f[first], second: zero[second]}).argmax(1).cpu().numpy())
            preds[second].append(model.fuse({first: zero[first], second: f[second]}).argmax(1).cpu().numpy())
        correct = {k: np.concatenate(v) == labels for k, v in preds.items()}
        return shapley_values(correct[first], correct[second], correct["all"])

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        features, labels = ctx.features("train")
        phi_a, phi_v = self.valuate(model, features, labels)
        first, second = model.modalities
        metrics = {f"diag/value_{first}": float(phi_a.mean()), f"diag/value_{second}": float(phi_v.mean())}
        if ctx.epoch >= self.params.warmup - 1:
            if self.params.level == "sample":
                self.rows, self.keep = sample_level_rows(phi_a, phi_v)
            else:
                self.rows, self.keep, part_a, part_v = modality_level_rows(
                    phi_a, phi_v, self.params.part_ratio, self.params.alpha)
                metrics |= {f"diag/part_value_{first}": part_a, f"diag/part_value_{second}": part_v}
            metrics["diag/train_rows"] = float(len(self.rows))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        if self.rows is None:
            return {}
        return {"rows": torch.as_tensor(self.rows), "keep": torch.as_tensor(self.keep)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rows" in state:
            self.rows, self.keep = state["rows"].cpu().numpy(), state["keep"].cpu().numpy()
        else:
            self.rows = self.keep = None
