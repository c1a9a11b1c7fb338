"""InfoReg: adaptive unimodal regulation in the prime learning window (Huang et al., CVPR 2025).

As the official ``main.py`` (GeWu-Lab/InfoReg_CVPR2025, latest version), per epoch and batch:

* loss = CE(fused) + CE(out_a) + CE(out_v), uni-modal logits from the fused head's weight halves + b/2
  (:func:`~drl_tune.methods.base.unimodal_logits`; the head gets their gradient too);
* trace: T = Σ over the conv/linear weight tensors of the tracked encoder of the element-mean of the
  squared gradient summed over the epoch's steps — the gradient *after* the proximal term below, as the
  official accumulates it just before ``optimizer.step()``; the list starts as ten zeros;
* at the start of epoch e: k = 1 if e = 0, else k = (T[−1] − T[−11]) / Σ T[−10:] (the official
  (mean(T[−10:]) − mean(T[−11:−1])) / mean(T[−10:])); the prime learning window is k > K (0.05);
* per batch, with batch-summed scores score_m = Σ_i softmax(out_m)[i, y_i]: if score_a > score_v and
  k > K, β_a = 0.95·exp(tanh(score_a − score_v)); if score_a < score_v and k > K, β_v =
  0.1·exp(tanh(score_v − score_a)); the chosen encoder's gradients get + β·(w − w_epoch_start) on every
  parameter (w_epoch_start: the weights at the start of the epoch, the official ``global_model``).

Two modalities, generalised from audio-visual: the first modality of the model plays "audio" (its
encoder's trace gives k, its β uses ``beta_first`` = 0.95), the second plays "visual" (``beta_second`` =
0.1). Every dataset here lists audio first; ``trace_modality`` can name the other one.

Departures from the official code: (1) it crashes on layers without gradients (``module.weight.grad`` is
None for a layer the losses never reach); such a layer adds 0 to the trace here; (2) the three extra
recording backward passes (only logged officially) are not run — one backward of the summed loss gives
the same gradients; (3) sum fusion reads each modality's logits with its own layer's full bias;
(4) a zero trace window (Σ T[−10:] = 0, e.g. no gradient at all) gives k = 0 instead of a division error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.ground.errors import ConfigError
from drl_tune.methods.base import EpochContext, EpochMeans, HeadScoredMethod, batch_scores, unimodal_logits
from drl_tune.models import ModelOutput, MultimodalClassifier


@dataclass
class InfoRegParams:
    threshold: float = param(0.05, "K: the prime learning window is k > K", ge=0)
    beta_first: float = param(0.95, "β scale of the first modality (\"audio\" in the official code)", ge=0)
    beta_second: float = param(0.1, "β scale of the second modality (\"visual\")", ge=0)
    window: int = param(10, "trace window in epochs (the official ten-epoch means)", ge=1)
    trace_modality: str = param("", "whose encoder's trace gives k (\"\" = the first modality)")

    def __post_init__(self) -> None:
        check_fields(self, "inforeg.")  # the numbers' domains are declared on the fields (ground/domains.py)


def window_k(trace: list[float], window: int = 10) -> float:
    """k from the trace list (pre-padded with ``window`` zeros): (T[−1] − T[−w−1]) / Σ T[−w:]."""
    denominator = sum(trace[-window:])
    if denominator == 0:
        return 0.0
    return (trace[-1] - trace[-window - 1]) / denominator


def betas(score_1: float, score_2: float, k: float, p: InfoRegParams) -> tuple[float, float]:
    """(β_1, β_2) of the official code for one batch."""
    if score_1 > score_2 and k > p.threshold:
        return p.beta_first * math.exp(math.tanh(score_1 - score_2)), 0.0
    if score_1 < score_2 and k > p.threshold:
        return 0.0, p.beta_second * math.exp(math.tanh(score_2 - score_1))
    return 0.0, 0.0


class InfoReg(HeadScoredMethod):
    name = "inforeg"
    Params = InfoRegParams
    params: InfoRegParams

    def __init__(self, params: InfoRegParams) -> None:
        super().__init__(params)
        self.model: MultimodalClassifier | None = None
        self.trace: list[float] = [0.0] * params.window
        self.start_weights: dict[str, dict[str, torch.Tensor]] = {}
        self.k = 1.0
        self.epoch = 0
        self._fim: dict[str, torch.Tensor] = {}
        self._diag = EpochMeans()  # diag/beta_<m>: the proximal weights applied, per step
        self._scores: dict[str, float] = {}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        super().setup(model, optimizer)
        if self.params.trace_modality and self.params.trace_modality not in model.modalities:
            raise ConfigError(f"inforeg.trace_modality {self.params.trace_modality!r} is not a modality of this "
                              f"run ({', '.join(model.modalities)})")

    def _tracked(self, model: MultimodalClassifier) -> nn.Module:
        return model.encoders[self.params.trace_modality or model.modalities[0]]

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.model, self.epoch = model, ctx.epoch
        self.k = 1.0 if ctx.epoch == 0 else window_k(self.trace, self.params.window)
        self.start_weights = {
            m: {n: p.detach().clone() for n, p in model.encoders[m].named_parameters()} for m in model.modalities
        }
        self._fim = {
            name: torch.zeros_like(mod.weight)
            for name, mod in self._tracked(model).named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))
        }
        self._diag.reset()

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        uni = unimodal_logits(self.model, outputs.features)
        self._scores = batch_scores(uni, labels)
        return F.cross_entropy(outputs.logits, labels) + sum(F.cross_entropy(z, labels) for z in uni.values())

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        assert self.model is not None
        first, second = self.model.modalities
        beta = betas(self._scores[first], self._scores[second], self.k, self.params)
        for m, b in zip((first, second), beta, strict=True):
            if b == 0:
                continue
            start = self.start_weights[m]
            for name, weight in self.model.encoders[m].named_parameters():
                if weight.grad is not None:
                    weight.grad.add_(weight.detach() - start[name], alpha=b)
        for name, mod in self._tracked(self.model).named_modules():
            if name in self._fim and mod.weight.grad is not None:
                self._fim[name] += mod.weight.grad * mod.weight.grad
        for m, b in zip((first, second), beta, strict=True):
            self._diag.add(f"beta_{m}", b)

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        trace = float(sum(f.mean().item() for f in self._fim.values()))
        self.trace.append(trace)
        return {"diag/trace": trace, "diag/k": self.k, **self._diag.means()}

    def state_dict(self) -> dict[str, Any]:
        return {"trace": list(self.trace), "start_weights": self.start_weights, "k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trace = [float(t) for t in state["trace"]]
        self.start_weights = state["start_weights"]
        self.k = float(state["k"])
