"""LFM (Yang et al., NeurIPS 2024, "Facilitating Multimodal Classification via Dynamically Learning Modality Gap"):
a supervised and an unsupervised (alignment) loss whose weights are learned during training.

Reference: the official njustkmg/NeurIPS24-LFM at ad44fa0, ``Crema_epoch_learnable.py`` (the learnable weighting,
the issue's "second-order step"; line numbers below are that file's unless named) and ``Crema_epoch.py`` (the
fitted schedule, the script the README runs). BalanceBenchmark (GeWu-Lab/BalanceBenchmark at 4c1482f,
``balancemm/trainer/LFM_trainer.py``) was read second.

What the official code trains:

* model (``model/AudioVideo.py`` lines 54–65): a ResNet18 per modality, a linear head per modality (``cls_a``,
  ``cls_v``); the multimodal prediction is ½(o_a + o_v) (lines 115 and 158–159);
* loss per batch (lines 114–118): L = 2·(w_cls·CE(½(o_a + o_v), y) + w_align·A(o_a, o_v)), one SGD step over every
  parameter. A is the "Alignment" of lines 37–44: with p = softmax(o_a), q = softmax(o_v), m = ½(p + q), it is
  ½·(kl_div(log p, m) + kl_div(log q, m)) with batch-mean reduction — torch's ``kl_div(input, target)`` is
  KL(target ‖ exp(input)), so A = ½·(KL(m ‖ p) + KL(m ‖ q)), not the Jensen–Shannon divergence its variable name
  says; implemented as the code computes it;
* the weights (``getAlpha_Learnable``, lines 55–97), updated once before every epoch, epoch 0 included (line 254,
  before the epoch's training at line 256), starting from ``cls_k = [0.05, 0.95]`` (line 250: w_cls = 0.05,
  w_align = 0.95). On a fixed batch B (below): L_tot = w_cls·CE + w_align·A (line 73, without the factor 2);
  g_tot = ∇_θ L_tot with its graph (line 74), g_cls = ∇_θ CE (line 76); the Hessian-vector product
  h = ∇_θ(g_tot · g_cls) = ∇²_θ L_tot · g_cls (lines 79–84, g_cls a constant there); the hypergradient is the mean
  of h over the *first* parameter tensor of ``model.parameters()`` only (line 87, ``hessian_vector_prod[0]``: the
  audio encoder's first convolution weight), and w_align ← clip(w_align − lr_α·that, 0.05, 0.95),
  w_cls = 1 − w_align (lines 92–94). lr_α = 1e-4 (line 246), halved before the update at epochs 20, 40, … (lines
  90–91), i.e. lr_α·0.5^⌊epoch/20⌋. This is what the code computes, not the implicit bilevel gradient
  (−g_clsᵀ·H⁻¹·∂_α∇_θL_tot); ``diag/hypergrad`` logs it;
* the batch B (lines 216–233, 59–62): 16 random *training* samples are held out of the training set for the whole
  run (lines 217–222), loaded once as one batch (line 233), and its first half (8 samples) drives every update;
  the other 8 are used by nothing;
* the model's mode during the update: train at epoch 0 (a fresh module), eval afterwards (``val``, line 135, left
  it so), so BatchNorm uses batch statistics (and updates its running ones) only at epoch 0;
* ``schedule: fitted`` — ``Crema_epoch.py`` line 195 (``getAlpha_Learnable_Fitted``, lines 47–53): no
  second-order step and no held-out samples; w_cls = Σ_i c_i·epoch^i, a degree-5 polynomial fitted to a learnable
  run (w_cls 0.205 at epoch 0, 0.30 at 20, 0.50 at 80; above 1, so w_align < 0, from epoch 177 to 188, as the
  official code has it), w_align = 1 − w_cls (the official second coefficient list is exactly that).

Defaults here are the official ones: schedule learnable (the issue's rule; the README runs the fitted script),
init_align 0.95, alpha_lr 1e-4, alpha_lr_decay 0.5 every 20 epochs, clip 0.05, held_out 16 (8 used); the file's
first version (63d6961) had cls_k = [0.02, 0.98], lr_α 1e-7 on the *sum* of h over the first tensor (≈ 3e-4 on the
mean for a 64×1×7×7 convolution), lr_α/10 every 5 epochs and the band [0.1, 0.9]. The official
run (``data/crema.json``): SGD lr 1e-2, momentum 0.9, weight decay 1e-4, batch 64, 200 epochs, StepLR(70, 0.1)
stepped before each epoch's training (line 255), Xavier/Kaiming initialisation (line 237, ``utils/tools.py``
lines 114–122), one frame per clip at 224² — run-level settings, not this method's; the engine has no learning-rate
schedule. The rule compares a pair of uni-modal predictions: two modalities (BalanceBenchmark's N-modality
average over pairs is another rule). It reads the uni-modal logits off the fused head: ``fusion: sum`` is the
official model exactly (o_m = W_m·f_m + b_m; the fused logits o_a + o_v, whose argmax is the official
prediction's); ``concat`` splits the head (o_m = W[:, m]·f_m + b/2); FiLM and gated fusion are refused.

Departures from the official code: (1) the held-out samples are drawn from the run's seed (``numpy``), not by
``torch.randperm`` from the global seed; their batch is read un-augmented every epoch (``ctx.train_batches``,
training=False), where the official loads it once through the training transform (``dataset/CREMA.py``: random
resized crop and flip, drawn once, then fixed); (2) log p is ``log_softmax`` (the same number; finite where
``softmax(...).log()`` underflows to −inf); (3) the last product is differentiated with respect to the first
parameter only (``hvp_scope: first``) and g_cls is taken without a graph: the same numbers as lines 76–87 with one
full second backward pass fewer; ``hvp_scope: all`` (not official) averages h over every parameter instead;
(4) the double backward calls each encoder's ``forward`` directly, past ``torch.compile`` (``perf.compile``),
which has no double backward; (5) the first parameter is the first encoder's first parameter, i.e. the first
modality's: for CREMA-D (audio, visual) the audio encoder's first convolution, as official; (6) the official
scripts evaluate the test split every epoch under the name ``val`` (line 257); the engine selects on validation.

BalanceBenchmark's trainer differs: its initial weights are flipped — ``alpha = {1:0.05,0:0.95}``
(``LFM_trainer.py`` line 146) gives w_cls = alpha[0] = 0.95 and w_align = alpha[1] = 0.05 (alpha[0] weighs the CE in
both: its lines 56 and 347, official lines 73 and 116), where the official ``cls_k = [0.05, 0.95]`` (line 250)
starts from w_cls = 0.05, w_align = 0.95; its batch B is a quarter of the first batch of its *validation* loader
(lines 44 and 145), the split it selects on; it sets train mode before every update (line 149); its CE is on its
model's fused output (line 55). The paper's abstract speaks of "unsupervised contrastive learning" integrated with
the supervised loss; the official code's unsupervised term is the divergence A between the two uni-modal
predictions above (no negatives, no features). The paper's body was not reachable here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drl_tune.ground.domains import check_fields, param
from drl_tune.ground.errors import ConfigError
from drl_tune.methods.base import EpochContext, EpochMeans, Method, require_unimodal_head, unimodal_logits
from drl_tune.models import ModelOutput, MultimodalClassifier

SCHEDULES = ("learnable", "fitted")
HVP_SCOPES = ("first", "all")
# Crema_epoch.py line 49 (coef_alpha1): w_cls(epoch) = Σ_i c_i·epoch^i; line 50's list is 1 − this polynomial
FITTED_CLS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)


@dataclass
class LFMParams:
    schedule: str = param("learnable", "`learnable`: the weights follow the official second-order step before each "
                                       "epoch; `fitted`: the official polynomial of the epoch (Crema_epoch.py)",
                          choices=SCHEDULES)
    init_align: float = param(0.95, "starting weight of the alignment term (the CE's is 1 − it; official "
                                    "cls_k = [0.05, 0.95])", ge=0, le=1)
    alpha_lr: float = param(1e-4, "lr_α: step size of the weight's hypergradient step at epoch 0", ge=0)
    alpha_lr_decay: float = param(0.5, "factor on lr_α every `alpha_lr_every` epochs", gt=0, le=1)
    alpha_lr_every: int = param(20, "epochs between lr_α's decays", ge=1)
    clip: float = param(0.05, "the alignment weight is kept in [clip, 1 − clip]", ge=0, lt=0.5)
    held_out: int = param(16, "training samples held out of training for the step (the first half drive it; "
                              "learnable only; never val or test)", ge=2)
    hvp_scope: str = param("first", "`first`: the hypergradient is the mean Hessian-vector product over the first "
                                    "parameter tensor (official); `all`: over every parameter", choices=HVP_SCOPES)

    def __post_init__(self) -> None:
        check_fields(self, "lfm.")


def alignment(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """The official "Alignment": ½·(KL(m ‖ p) + KL(m ‖ q)), batch-mean, p, q the softmaxes, m their mean."""
    log_p, log_q = torch.log_softmax(logits_a, dim=-1), torch.log_softmax(logits_b, dim=-1)
    m = 0.5 * (log_p.exp() + log_q.exp())
    return 0.5 * (F.kl_div(log_p, m, reduction="batchmean") + F.kl_div(log_q, m, reduction="batchmean"))


def lfm_losses(unimodal: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the mean of the two uni-modal logits, their alignment)."""
    first, second = unimodal.values()
    return F.cross_entropy(0.5 * (first + second), labels), alignment(first, second)


def fitted_cls_weight(epoch: int) -> float:
    """The official fitted schedule's CE weight at ``epoch`` (the alignment's is 1 − it)."""
    return float(sum(c * epoch**i for i, c in enumerate(FITTED_CLS)))


def alpha_lr_at(params: LFMParams, epoch: int) -> float:
    """lr_α at ``epoch``: the official halving at epochs 20, 40, … in closed form."""
    return params.alpha_lr * params.alpha_lr_decay ** (epoch // params.alpha_lr_every)


def held_out_indices(n_train: int, count: int, seed: int) -> np.ndarray:
    """``count`` training indices drawn once from the run's seed, in draw order."""
    return np.random.default_rng([seed, 2024]).permutation(n_train)[:count]


def hypergradient(model: MultimodalClassifier, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                  w_cls: float, w_align: float, scope: str = "first") -> float:
    """Mean of ∇²_θ(w_cls·CE + w_align·A)·∇_θCE over the first parameter tensor (``first``) or all (``all``), on the
    given batch, in the model's current mode. Leaves no ``.grad`` behind."""
    params = [p for p in model.parameters() if p.requires_grad]
    # forward past any torch.compile wrapper: compiled graphs have no double backward
    features = {m: model.encoders[m].forward(inputs[m]) for m in model.modalities}
    ce, align = lfm_losses(unimodal_logits(model, features), labels)
    g_total = torch.autograd.grad(w_cls * ce + w_align * align, params, create_graph=True, allow_unused=True)
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    terms = [(gt * gc.detach()).sum() for gt, gc in zip(g_total, g_ce, strict=True)
             if gt is not None and gc is not None and gt.requires_grad]
    targets = params[:1] if scope == "first" else params
    size = sum(p.numel() for p in targets)
    if not terms:
        return 0.0
    hvp = torch.autograd.grad(torch.stack(terms).sum(), targets, allow_unused=True)
    return float(sum(h.double().sum() for h in hvp if h is not None)) / size


class LFM(Method):
    name = "lfm"
    modalities = 2  # the alignment compares a pair of uni-modal predictions
    Params = LFMParams
    params: LFMParams

    def __init__(self, params: LFMParams) -> None:
        super().__init__(params)
        self.w_align = params.init_align
        self.model: MultimodalClassifier | None = None
        self._hypergrad: float | None = None
        self._held: np.ndarray | None = None  # the held-out training samples (learnable schedule)
        self._diag = EpochMeans()  # diag/loss_cls, diag/loss_align

    @property
    def w_cls(self) -> float:
        return 1.0 - self.w_align

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)

    def held_out(self, n_train: int, seed: int) -> np.ndarray:
        if self.params.held_out > n_train // 2:
            raise ConfigError(f"lfm.held_out is {self.params.held_out}, more than half of the {n_train} training "
                              f"samples; lower it")
        return held_out_indices(n_train, self.params.held_out, seed)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.model, self._hypergrad = model, None
        self._diag.reset()
        if self.params.schedule == "fitted":
            self.w_align = 1.0 - fitted_cls_weight(ctx.epoch)
            return
        self._held = self.held_out(ctx.n_train, ctx.seed)
        parts: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
        for x, y in ctx.train_batches(self._held[: self.params.held_out // 2], training=False):
            parts.append(({m: t.clone() for m, t in x.items()}, y.clone()))  # the engine reuses a batch's memory
        inputs = {m: torch.cat([x[m] for x, _ in parts]) for m in model.modalities}
        labels = torch.cat([y for _, y in parts])
        model.train(ctx.epoch == 0)  # official: a fresh module at epoch 0, left in eval mode by val() afterwards
        grad = hypergradient(model, inputs, labels, self.w_cls, self.w_align, self.params.hvp_scope)
        self._hypergrad = grad
        lr = alpha_lr_at(self.params, ctx.epoch)
        self.w_align = min(max(self.w_align - lr * grad, self.params.clip), 1.0 - self.params.clip)

    def training_rows(self, n_train: int) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.arange(n_train)
        return (rows, None) if self._held is None else (np.setdiff1d(rows, self._held), None)

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        ce, align = lfm_losses(unimodal_logits(self.model, outputs.features), labels)
        self._diag.add("loss_cls", ce)
        self._diag.add("loss_align", align)
        return 2.0 * (self.w_cls * ce + self.w_align * align)

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        metrics = {**self._diag.means(), "diag/w_cls": self.w_cls, "diag/w_align": self.w_align}
        if self._hypergrad is not None:
            metrics["diag/hypergrad"] = self._hypergrad
            metrics["diag/alpha_lr"] = alpha_lr_at(self.params, ctx.epoch)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"w_align": self.w_align}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_align = float(state["w_align"])
