"""MLA: multimodal learning with alternating uni-modal adaptation (Zhang, Yoon, Bansal & Yao, CVPR 2024).

As the official ``main.py`` run with ``--gs_flag`` (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-
Adaptation @11ae1ee: ``train_epoch``'s ``gs_flag`` branch, ``valid``, ``calculate_gating_weights``; the projection
in ``utils/utils.py``, ``GSPlugin``), per batch:

* every encoder encodes the batch once; then, modality by modality in the model's order, one head H shared by all
  modalities (a linear layer on one modality's features, the official ``fusion_module.fc_out`` of input width 512;
  added by ``extra_modules``, the model's own fusion head is not used) gives L_m = CE(H(h_m)); L_m is
  back-propagated and the run's optimizer steps — M steps per batch, each reaching encoder m and H
  (``steps_optimizer``);
* between those steps the gradients are zeroed, not dropped, as ``optimizer.zero_grad()`` did under the torch
  1.8.1 the authors pin (``requirements.txt``): a later modality's step also moves the parameters stepped earlier
  in the same batch by their momentum and weight decay. After the batch every gradient is dropped (``del p.grad``
  in ``train_epoch``). ``momentum_all: false`` steps only what the modality's own loss reached (torch ≥ 2);
* the gradient projection of the shared head. ``GSPlugin.before_update`` (``utils/utils.py`` lines 24–41)
  receives ``fusion_module.fc_out`` itself, an ``nn.Linear``, and projects only the parameter named
  ``"module.weight"`` (line 32) — a Linear layer's weight is named ``"weight"``, so the official code never
  projects (its memory P stays the identity). ``projection: official`` (the default) trains as that code does,
  because the numbers the paper reports came from it; ``applied`` runs the projection the gate was written for,
  exactly as lines 34–41 compute it: a memory P (d×d, the identity at the start, one for all modalities, kept
  across epochs); before every modality step except the run's first, r = batch mean of h_m [1, d], k = P·rᵀ
  [d, 1], P ← P − (k·kᵀ) ⊘ (α + k·r) with α = 0.1^(1 + b/B) (b the batch's index in the epoch,
  B = ⌈N/batch_size⌉): line 36's ``torch.mm(k, r)`` is the d×d outer product k·r, so the division is element by
  element, (P)_ij −= k_i·k_j / (α + k_i·r_j); then P ← P/‖P‖_F, and H's weight gradient becomes ∇W·Pᵀ (its bias
  is untouched). ``rank_one`` (our variant) divides by the scalar α + r·k instead (what line 36 computes with
  ``torch.mm(r, k)``, the rank-one update P − k·kᵀ/(α + r·P·rᵀ)). BalanceBenchmark's ``MLA_trainer.py`` fixes
  the gate (``n == "weight"``) but *adds* ∇W·Pᵀ to ∇W — a third variant, not offered;
* evaluation fuses H's uni-modal logits z_m with weights λ_m = exp(max_u e_u − e_m) / Σ_u exp(max_u e_u − e_u)
  from their entropies e_m (``calculate_gating_weights``, lines 72–87; ``calculate_gating_weights3``, lines
  89–106). ``gating: batch`` (the default) is the official ``calculate_entropy`` (lines 65–70): softmax over the
  *samples* of each evaluation batch (line 66, ``dim=0``), e_m summed over the batch (line 69), so one λ_m per
  modality and batch; batches are the run's ``batch_size`` in split order, as the official test loader's
  (exactly so when ``eval.batch_size`` is a multiple of it). ``classes``: the commented-out line 67 (softmax over
  each sample's classes, ``dim=1``) with line 69's sum over the whole batch, so again one λ_m per modality and
  batch. ``sample`` (our variant; the official code has no per-sample form): e_m per sample, over its classes,
  one λ_m per modality and sample. ``fixed``: the official fusion without ``--dynamic`` (lines 647–651), the
  weights the training run passes: ``main(av_alpha = 0.55)`` (line 968), so two modalities are fused as
  0.55·z_1 + 0.45·z_2 (line 651: ``av_alpha * out_a + (1-av_alpha) * out_v``, where ``out_a`` is the model's first
  output — audio on CREMA-D (``models/basic_model.py`` line 77), text on Food-101/MVSA (line 200)), and three as
  0.35·z_1 + 0.25·z_2 + 0.4·z_3 (line 649; ``--a_alpha``/``--v_alpha``/``--t_alpha`` defaults, lines 56–58, for
  audio, visual, text in that order, line 275); here z_1, z_2, … are in the model's modality order, and other
  counts are refused. ``equal`` (our variant): every modality weighed 1/M.

The rule is per modality, so it runs on any number of modalities, as the official code does on three
(IEMOCAP); the shared head needs every encoder to have the same feature width (refused otherwise).
``train/loss`` is the mean of the modalities' L_m (the official epoch loss is 0.55·L_a + 0.45·L_v, the
``av_alpha``-weighted sum at line 472, which leaves L_t out on three modalities).

Departures from the official code: (1) entropies use ``log_softmax`` instead of ``log(softmax(·))``: the same
value, without the NaN of 0·log 0 when a probability underflows; (2) the README's "dynamic fusion" command passes
``-dynamic``, which argparse rejects (``unrecognized arguments``); the gating is what ``--dynamic`` selects.
The official model's weight initialisation (``weight_init``: Xavier/Kaiming) is not copied; every method here
starts from the same default initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.ground.errors import ConfigError
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method, shared_width
from drl_tune.models import MultimodalClassifier

GATINGS = ("batch", "classes", "sample", "fixed", "equal")
PROJECTIONS = ("official", "applied", "rank_one")
# gating: fixed — the official fixed fusion weights by number of modalities, in the model's modality order
# (main.py: av_alpha = 0.55 from line 968 for two; --a_alpha/--v_alpha/--t_alpha defaults, lines 56–58, for three)
FIXED_WEIGHTS = {2: (0.55, 0.45), 3: (0.35, 0.25, 0.4)}


@dataclass
class MLAParams:
    gating: str = param("batch", "MLA's fusion at evaluation: `batch` (official `--dynamic`: entropies of softmax over "
                        "each evaluation batch's samples), `classes` (the commented-out official `dim=1`: over each "
                        "sample's classes, still summed over the batch), `sample` (ours: one weight per sample), "
                        "`fixed` (official fixed weights in modality order: 0.55/0.45, or 0.35/0.25/0.4 for three; "
                        "other counts refused), `equal` (ours: 1/M each)", choices=GATINGS)
    projection: str = param("official", "`official`: the shared head's gradient is never projected (the official "
                            "gate `n == \"module.weight\"` never matches); `applied`: the projection that gate was "
                            "written for, as the official lines compute it (element-wise division by α + k·r); "
                            "`rank_one` (ours): the same with the scalar α + r·k", choices=PROJECTIONS)
    momentum_all: bool = param(True, "true (official, torch 1.8.1's zero_grad): a later modality's step in the batch "
                               "also moves the earlier modalities by momentum and weight decay; false: only what its "
                               "loss reached")

    def __post_init__(self) -> None:
        check_fields(self, "mla.")


def projection_update(memory: torch.Tensor, r: torch.Tensor, alpha: float, rank_one: bool = False) -> torch.Tensor:
    """GSPlugin's memory update for the batch-mean features r [1, d], k = P·rᵀ [d, 1], then /‖·‖_F: as the official
    line, P − (k·kᵀ) ⊘ (α + k·r) (element-wise; ``k·r`` is d×d); ``rank_one``: P − k·kᵀ/(α + r·k) (a scalar)."""
    k = memory @ r.t()
    updated = memory - (k @ k.t()) / (alpha + (r @ k if rank_one else k @ r))
    return updated / torch.linalg.matrix_norm(updated)


def projection_alpha(batch_index: int, n_batches: int) -> float:
    """α = 0.1^(1 + b/B): from 0.1 at an epoch's first batch towards 0.01 at its last."""
    return 0.1 ** (batch_index / n_batches + 1.0)


def entropies(logits: list[torch.Tensor], gating: str) -> torch.Tensor:
    """[M] (batch: softmax over the batch's samples; classes: over each sample's classes; either summed over the
    whole batch) or [M, B] (sample: per sample, over its classes)."""
    dim = 0 if gating == "batch" else 1
    out = []
    for z in logits:
        log_p = F.log_softmax(z.float(), dim=dim)
        h = -(log_p.exp() * log_p)
        out.append(h.sum(dim=1) if gating == "sample" else h.sum())
    return torch.stack(out)


def fixed_weights(n_modalities: int) -> tuple[float, ...]:
    """The official fixed fusion weights for ``n_modalities`` (model order); other counts are refused."""
    if n_modalities not in FIXED_WEIGHTS:
        raise ConfigError(f"mla.gating: fixed uses the official fixed weights, defined for two modalities "
                          f"(0.55/0.45) and three (0.35/0.25/0.4); this run has {n_modalities}: use "
                          f"mla.gating: equal (1/M each) or an entropy gating")
    return FIXED_WEIGHTS[n_modalities]


def gated_logits(logits: list[torch.Tensor], gating: str) -> torch.Tensor:
    """Σ_m λ_m z_m: fixed/equal weights, or λ = softmax(−e) over the modalities (= exp(max e − e_m) /
    Σ exp(max e − e_u)) of the entropies e."""
    stacked = torch.stack(logits).float()
    if gating in ("fixed", "equal"):
        m = len(logits)
        weights = torch.tensor(fixed_weights(m) if gating == "fixed" else [1.0 / m] * m, device=stacked.device)
        return (weights.view(-1, 1, 1) * stacked).sum(dim=0)
    weights = torch.softmax(-entropies(logits, gating), dim=0)  # [M] or [M, B]
    weights = weights.unsqueeze(-1) if gating == "sample" else weights.view(-1, 1, 1)
    return (weights * stacked).sum(dim=0)


class MLA(Method):
    name = "mla"
    Params = MLAParams
    params: MLAParams
    steps_optimizer = True  # one step of the run's optimizer per modality per batch

    def __init__(self, params: MLAParams) -> None:
        super().__init__(params)
        self.optimizer: torch.optim.Optimizer | None = None
        self.memory: torch.Tensor | None = None  # P of the applied or rank_one projection
        self.steps = 0  # modality steps over the run (the official exp_count)
        self.batch_index, self.n_batches, self.chunk = 0, 1, 0
        self._diag = EpochMeans()  # diag/loss_<m>: each modality's L_m, per batch

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {"head": nn.Linear(shared_width(model, self.name), n_classes)}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        if self.params.gating == "fixed":
            fixed_weights(len(model.modalities))  # refuses a count without official weights
        self.optimizer = optimizer
        if self.params.projection != "official" and self.memory is None:
            head = cast(nn.Linear, model.method_modules["head"])
            self.memory = torch.eye(head.in_features, device=head.weight.device)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.batch_index, self.chunk = 0, ctx.batch_size
        self.n_batches = max(math.ceil(ctx.n_train / ctx.batch_size), 1)  # len() of the official DataLoader
        self._diag.reset()

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        assert self.optimizer is not None
        head = cast(nn.Linear, model.method_modules["head"])  # extra_modules' head
        features = model.encode(batch.inputs)
        losses = []
        for m in model.modalities:
            loss = F.cross_entropy(head(features[m]), batch.labels)
            if not torch.isfinite(loss):
                return loss.detach()  # the engine stops the run with a clear error
            loss.backward()
            if self.memory is not None:
                self.project(head, features[m].detach())
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=not self.params.momentum_all)
            self.steps += 1
            losses.append(loss.detach())
            self._diag.add(f"loss_{m}", loss)
        self.optimizer.zero_grad(set_to_none=True)  # the official del p.grad after the batch
        self.batch_index += 1
        return torch.stack(losses).mean()

    @torch.no_grad()
    def project(self, head: nn.Linear, features: torch.Tensor) -> None:
        """The applied (or rank_one) projection of H's weight gradient (skipped at the run's first modality step, as
        official)."""
        assert self.memory is not None
        if self.steps == 0 or head.weight.grad is None:
            return
        r = features.float().mean(dim=0, keepdim=True)
        self.memory = projection_update(self.memory, r, projection_alpha(self.batch_index, self.n_batches),
                                        rank_one=self.params.projection == "rank_one")
        head.weight.grad = head.weight.grad @ self.memory.t().to(head.weight.grad.dtype)

    def eval_logits(self, model: MultimodalClassifier, features: dict[str, torch.Tensor]) -> torch.Tensor:
        head = model.method_modules["head"]
        logits = [head(features[m]) for m in model.modalities]
        n = logits[0].shape[0]
        chunk = self.chunk if self.params.gating in ("batch", "classes") and self.chunk else n
        return torch.cat([gated_logits([z[s : s + chunk] for z in logits], self.params.gating)
                          for s in range(0, n, chunk)])

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.memory is not None:
            state["memory"] = self.memory.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        if "memory" in state and self.memory is not None:
            self.memory = state["memory"].to(self.memory.device)
