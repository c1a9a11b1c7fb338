"""Greedy: balanced multi-modal learning by conditional learning speed (Wu, Jastrzębski, Cho & Geras, ICML 2022).

As the official ``train.py`` with ``configs/training_guided.gin`` (nyukat/greedy_multimodal_learning @a190e03;
``src/model.py``, ``src/balanced_mmtm.py``, ``src/callbacks.py`` ``Bias_Mitigation_Strong``, ``src/framework.py``):

* model: two ResNet18 branches, each with its own linear classifier (``model.py`` lines 53–56), joined by three MMTM
  blocks, one after each of ``layer2``, ``layer3`` and ``layer4`` of both trunks (``MMTM(128, 128, 4)``,
  ``MMTM(256, 256, 4)``, ``MMTM(512, 512, 4)``, lines 58–60, applied in the loop of lines 81–97; the stem and
  ``layer1`` run without one, lines 65–76). An MMTM block (``balanced_mmtm.py`` ``MMTM_mitigate``, lines 16–154,
  ``SEonly`` and ``shareweight`` off) squeezes each modality's maps by their spatial mean, concatenates the two
  squeezes, applies ``fc_squeeze`` (width int(2·(C_0 + C_1)/ratio), ratio 4; lines 25–26) and a ReLU, then one
  excitation layer per modality and a sigmoid (lines 94–111), and multiplies each modality's maps channel-wise by
  its gate (line 154). Here the blocks are method modules (``extra_modules``) between the project's own two
  ResNet18 trunks, run stage by stage through the ``encode_batch`` hook (methods/base.py) in training and in
  every evaluation pass alike;
* loss: the sum of the two branches' cross-entropies (``train.py`` ``blend_loss``, lines 22–28); the prediction is
  the mean of the two branches' logits (``model.py`` line 108, scored by ``acc``, ``train.py`` lines 31–39). Here a
  branch's logits are its part of the fused head (:func:`~drl_tune.methods.base.unimodal_logits`): with
  ``fusion: sum`` (the official late fusion) its own linear layer, exactly the official branch classifier; with
  ``concat`` the head's columns of that modality plus half the shared bias. Evaluation scores the fused head, the
  sum of the two branch logits (the official mean, up to the factor 2 that no argmax sees). FiLM and gated fusion
  have no branch logits and are refused;
* conditional learning speed (``callbacks.py`` ``compute_BDR``, lines 199–233), after the backward pass of every
  regular (not re-balancing) step, before the optimizer step: per parameter the squared norms ‖θ‖² and ‖∇θ‖²;
  per modality m two groups, the MMTM ("bypass") parameters of m — its excitation layers plus the shared
  ``fc_squeeze`` layers, which count for both — and the branch ("main") parameters of m — its ResNet and its
  classifier; each group's Σ‖∇θ‖² / Σ‖θ‖² of this step is added to a running sum M (never reset, from the run's
  first step on: ``on_train_begin`` lines 190–197 and line 261); BDR_m = log10(M_bypass,m / M_main,m) and
  d = BDR_0 − BDR_1;
* the rule (``on_backward_end``, lines 240–263): from ``starting_epoch`` on (``on_epoch_begin``, lines 265–267),
  a regular step with |d| > ``threshold`` starts ``window`` re-balancing steps (the next ``window`` batches; the
  state crosses epoch boundaries) for modality 0 when d > 0, modality 1 when d < 0 (the "caring modality"); d is
  not computed during them. In a re-balancing step, every MMTM block replaces the caring modality's gate by the
  running mean of the gates it has produced (``balanced_mmtm.py`` lines 128–152): that branch no longer receives
  the other modality's information through the blocks, while the other branch still does. The running mean is
  the mean over every forward so far of the batch-mean gate, the current batch included (lines 113–116).

Defaults (``configs/training_guided.gin``): ``threshold`` 0.01 (``Bias_Mitigation_Strong.epsilon``, line 14),
``window`` 5 (``curation_windowsize``, line 15), ``starting_epoch`` 2 counted from 1 (line 16; ``framework.py``
numbers epochs from 1, line 293) = 1 here, where epochs count from 0: the first epoch only accumulates M; MMTM
ratio 4 (``model.py`` lines 58–60). The gin file trains ModelNet40 (two views) with SGD lr 0.1, no momentum, no
weight decay, batch 8, 300 epochs (299 run: ``training_loop.py`` line 141, ``epochs=n_epochs - 1``), with
``ReduceLROnPlateau`` on the training loss (×0.3, patience 10; ``callbacks.py`` lines 334–348) and a stop once
training accuracy has been 100 % for 5 epochs (``CompletedStopping``, lines 306–330): both are the training
loop's, not the rule's, and are not reproduced (every method here trains a fixed number of epochs at one lr).
The official code defines the rule for two modalities only (``d`` is a difference of two), so other counts are
refused; the first modality of the model plays the official modality 0 ("visual" in the MMTM's names).

Departures from the official code: (1) the official running mean of modality 1's gate is built from modality 0's
gates (``balanced_mmtm.py`` line 114 reads ``vis_out`` where ``sk_out`` is meant), so a re-balancing step for
modality 1 scales its maps by modality 0's mean gate; ``gate_average: official`` (the default) keeps that,
``own`` uses each modality's own gates; (2) the official running means are updated by every forward, validation
and test batches included (lines 113–116 run in eval mode too): here only training forwards update them — test
data never reaches a training step; (3) the official evaluation forward uses whatever re-balancing state the last
training step left (``framework.py`` line 236 calls ``_compute_loss_and_metrics``, which passes the current
``curation_mode``, lines 146–148); here evaluation always runs the regular forward (every gate live); (4) for
frames (a clip of T frames folded into the trunk's batch) the squeeze is each sample's mean over its frames and
space, and its gate scales all its frames, as the original MMTM squeezes video maps (ModelNet40's views are single
images); a spectrogram is one map per sample, as official; (5) a group whose weights are all zero contributes 0
to M, and BDR_m is NaN (no re-balancing) while M_bypass,m or M_main,m is 0 — the official divides by zero; (6) with
``fusion: concat`` the "main" group of m holds the head's weight columns of m and the shared bias (counted for
both, like ``fc_squeeze``); (7) the per-step squared norms are float32 sums per parameter, added in float64 — the
official ``(parameter ** 2).sum().item()`` added as Python floats, the same arithmetic up to summation order; one
host read per regular step (the rule needs d before the next batch). On CUDA the staged forward runs in float32:
``perf.bf16`` wraps the encoders' own ``forward``, which this method does not call. The official ResNets'
initialisation and the MMTM layers' (torch's default ``nn.Linear``) are torch's defaults, as here.

The paper's full text was not at hand when this file was written, so what it says is compared here only where its
summary is known: its Figure 1 is this model (two uni-modal networks joined by intermediate fusion layers, the
prediction the average of the two branches'), and its algorithm alternates regular and re-balancing steps as
above. The paper's analysis metric, the conditional utilisation rate (``eval.py`` with ``MMTM_MVCNN.mmtm_off``, which
feeds each block the other modality's average squeeze, lines 72–91), is not computed: the rule uses only the
learning speed. BalanceBenchmark (GeWu-Lab/BalanceBenchmark @4c1482f, ``balancemm/trainer/Greedy_trainer.py``,
``balancemm/models/avclassify_model.py``) reads differently: a fourth MMTM block after ``layer1``, cross-entropy on
the fused output only, threshold 0.001, re-balancing from the first step, and each modality's own gate mean.
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
from drl_tune.methods.base import Batch, EpochContext, Method, require_unimodal_head, unimodal_logits
from drl_tune.models import MultimodalClassifier
from drl_tune.models.encoders import FrameEncoder, SpectrogramEncoder
from drl_tune.models.fusion import ConcatFusion, SumFusion

STAGES = ("layer2", "layer3", "layer4")  # an MMTM block after each (official model.py lines 58-60, 81-97)
GATE_AVERAGES = ("official", "own")
ImageEncoder = SpectrogramEncoder | FrameEncoder


@dataclass
class GreedyParams:
    threshold: float = param(0.01, "ε: a regular step whose |d| (difference of the two modalities' conditional "
                             "learning speeds) exceeds it starts re-balancing steps (official `epsilon`)", ge=0)
    window: int = param(5, "Q: re-balancing steps each trigger starts (official `curation_windowsize`)", ge=1)
    starting_epoch: int = param(1, "first epoch (0-based) whose steps may re-balance; earlier steps only measure "
                                "the learning speeds (official `starting_epoch` 2, counted from 1)", ge=0)
    ratio: float = param(4.0, "MMTM squeeze ratio: the shared squeeze layer's width is int(2·(C_0 + C_1)/ratio)",
                         gt=0)
    gate_average: str = param("official", "the mean gate a re-balanced modality gets: `official` (modality 1's mean "
                              "is built from modality 0's gates, as the official line 114) or `own`",
                              choices=GATE_AVERAGES)

    def __post_init__(self) -> None:
        check_fields(self, "greedy.")


class MMTM(nn.Module):
    """One MMTM block between two trunks' maps (official ``MMTM_mitigate``, ``SEonly``/``shareweight`` off), with the
    running mean of each modality's batch-mean gate over the training forwards (buffers: checkpointed)."""

    def __init__(self, dims: tuple[int, int], ratio: float) -> None:
        super().__init__()
        hidden = int(2 * sum(dims) / ratio)
        self.squeeze = nn.Linear(sum(dims), hidden)
        self.excite = nn.ModuleList(nn.Linear(hidden, d) for d in dims)
        self.register_buffer("mean_gate_0", torch.zeros(dims[0]))
        self.register_buffer("mean_gate_1", torch.zeros(dims[1]))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def mean_gates(self) -> list[torch.Tensor]:
        return [cast(torch.Tensor, self.mean_gate_0), cast(torch.Tensor, self.mean_gate_1)]

    def forward(self, maps: list[torch.Tensor], batch: int, caring: int | None = None,
                gate_average: str = "official") -> list[torch.Tensor]:
        """``maps``: each modality's [batch·T, C, h, w] (T frames of a sample folded into the batch; 1 for a
        spectrogram); ``caring``: the modality whose gate is replaced by its running mean (a re-balancing step)."""
        per_sample = [x.unflatten(0, (batch, -1)) for x in maps]  # [B, T, C, h, w]
        squeezed = torch.cat([x.mean(dim=(1, 3, 4)) for x in per_sample], dim=1)
        excitation = torch.relu(self.squeeze(squeezed))
        gates = [torch.sigmoid(fc(excitation)) for fc in self.excite]
        if self.training:  # official lines 113-116, in training forwards only (departure 2)
            with torch.no_grad():
                steps = cast(torch.Tensor, self.steps)
                sources = [gates[0], gates[0]] if gate_average == "official" else gates
                for mean, gate in zip(self.mean_gates(), sources, strict=True):
                    mean.copy_((gate.mean(0) + mean * steps) / (steps + 1))
                steps += 1
        if caring is not None:
            gates[caring] = self.mean_gates()[caring].expand_as(gates[caring])
        return [(x * g[:, None, :, None, None]).flatten(0, 1) for x, g in zip(per_sample, gates, strict=True)]


def image_encoders(model: MultimodalClassifier) -> list[ImageEncoder]:
    """The two ResNet18 encoders, in modality order; refuses other encoders."""
    out = []
    for m in model.modalities:
        encoder = model.encoders[m]
        if not isinstance(encoder, (SpectrogramEncoder, FrameEncoder)):
            raise ConfigError(f"method greedy puts MMTM blocks between the ResNet18 trunks of the two encoders; "
                              f"modality {m!r} has a {type(encoder).__name__} (a feature modality has no feature maps)")
        out.append(encoder)
    return out


def stage_width(encoder: ImageEncoder, stage: str) -> int:
    return cast(int, getattr(encoder.trunk, stage)[-1].conv2.out_channels)


def speed_groups(model: MultimodalClassifier) -> list[list[tuple[torch.Tensor, Any]]]:
    """The parameters (with the slice that counts, or None for all of it) of the four groups, in the order
    bypass_0, bypass_1, main_0, main_1 (official ``compute_BDR``): a modality's MMTM excitation layers plus the
    shared squeeze layers; its encoder plus its part of the head (sum: its layer; concat: its weight columns and the
    shared bias)."""
    groups: list[list[tuple[torch.Tensor, Any]]] = [[], [], [], []]
    for block in cast(nn.ModuleList, model.method_modules["mmtm"]):
        block = cast(MMTM, block)
        for p in block.squeeze.parameters():
            groups[0].append((p, None))
            groups[1].append((p, None))
        for i, fc in enumerate(block.excite):
            groups[i].extend((p, None) for p in fc.parameters())
    fusion = model.fusion
    start = 0
    for i, m in enumerate(model.modalities):
        groups[2 + i].extend((p, None) for p in model.encoders[m].parameters())
        if isinstance(fusion, SumFusion):
            groups[2 + i].extend((p, None) for p in fusion.layers()[i].parameters())
        elif isinstance(fusion, ConcatFusion):
            width = model.feature_width(m)
            groups[2 + i].append((fusion.fc_out.weight, (slice(None), slice(start, start + width))))
            groups[2 + i].append((fusion.fc_out.bias, None))
            start += width
    return groups


@torch.no_grad()
def step_speeds(groups: list[list[tuple[torch.Tensor, Any]]]) -> list[float]:
    """Σ‖∇θ‖² / Σ‖θ‖² of each group for the gradients in ``.grad`` (0 for a group of zero weights)."""
    norms = []
    for group in groups:
        parts = [(p if index is None else p[index], p.grad if index is None else cast(torch.Tensor, p.grad)[index])
                 for p, index in group]
        w = torch.stack([x.detach().float().pow(2).sum() for x, _ in parts]).double().sum()
        g = torch.stack([torch.zeros((), device=x.device) if gr is None else gr.float().pow(2).sum()
                         for x, gr in parts]).double().sum()
        norms.append(torch.stack([g, w]))
    values = torch.stack(norms).tolist()
    return [g / w if w > 0 else 0.0 for g, w in values]


def speed_difference(sums: list[float]) -> float:
    """d = BDR_0 − BDR_1 with BDR_m = log10(M_bypass,m / M_main,m) from the running sums [bypass_0, bypass_1,
    main_0, main_1]; NaN while a sum is 0."""
    if min(sums) <= 0:
        return math.nan
    return math.log10(sums[0] / sums[2]) - math.log10(sums[1] / sums[3])


class Greedy(Method):
    name = "greedy"
    modalities = 2  # d is the difference of two modalities' learning speeds
    Params = GreedyParams
    params: GreedyParams

    def __init__(self, params: GreedyParams) -> None:
        super().__init__(params)
        self.sums = [0.0, 0.0, 0.0, 0.0]  # M_bypass_0, M_bypass_1, M_main_0, M_main_1
        self.unlocked = False
        self.curation = False  # the next step re-balances
        self.caring = 0
        self.curation_step = 0
        self._groups: list[list[tuple[torch.Tensor, Any]]] = []
        self._d: list[float] = []
        self._rebalanced = [0, 0]
        self._steps = 0

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        encoders = image_encoders(model)
        blocks = []
        for stage in STAGES:
            dims = (stage_width(encoders[0], stage), stage_width(encoders[1], stage))
            if int(2 * sum(dims) / self.params.ratio) < 1:
                raise ConfigError(f"greedy.ratio {self.params.ratio} leaves the MMTM squeeze after {stage} no unit "
                                  f"(width int(2·{sum(dims)}/ratio)); lower it")
            if self.params.gate_average == "official" and dims[0] != dims[1]:
                raise ConfigError(f"greedy.gate_average: official builds modality 1's mean gate from modality 0's "
                                  f"gates, which needs equal widths (after {stage}: {dims[0]} and {dims[1]}); use own")
            blocks.append(MMTM(dims, self.params.ratio))
        return {"mmtm": nn.ModuleList(blocks)}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)

    def encode_batch(self, model: MultimodalClassifier, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The two trunks stage by stage with an MMTM block after layer2, layer3 and layer4; a training forward
        re-balances when the rule says so, an evaluation forward never (departure 3)."""
        encoders = image_encoders(model)
        names = model.modalities
        batch = inputs[names[0]].shape[0]
        maps = [enc.trunk.layer1(enc.trunk.stem(enc.trunk_input(inputs[m]))) for enc, m in zip(encoders, names,
                                                                                                 strict=True)]
        caring = self.caring if model.training and self.curation else None
        for stage, block in zip(STAGES, cast(nn.ModuleList, model.method_modules["mmtm"]), strict=True):
            maps = [getattr(enc.trunk, stage)(x) for enc, x in zip(encoders, maps, strict=True)]
            maps = block(maps, batch, caring, self.params.gate_average)
        return {m: enc.pool(x, batch) for enc, m, x in zip(encoders, names, maps, strict=True)}

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.unlocked = self.unlocked or ctx.epoch >= self.params.starting_epoch  # official on_epoch_begin
        self._d, self._rebalanced, self._steps = [], [0, 0], 0

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        caring = self.caring if self.curation else None
        features = self.encode_batch(model, batch.inputs)
        logits = unimodal_logits(model, features)
        loss = torch.stack([F.cross_entropy(z, batch.labels) for z in logits.values()]).sum()  # official blend_loss
        if not torch.isfinite(loss):
            return loss.detach()  # the engine stops the run with a clear error
        loss.backward()
        self._steps += 1
        if caring is not None:
            self._rebalanced[caring] += 1
        self.after_step(model)
        return loss.detach()

    def after_step(self, model: MultimodalClassifier) -> None:
        """The official ``on_backward_end``: the state of the next step, from this step's gradients."""
        if not self._groups:
            self._groups = speed_groups(model)
        if self.unlocked and self.curation:
            self.curation_step += 1
            if self.curation_step == self.params.window:
                self.curation = False
            return
        for i, speed in enumerate(step_speeds(self._groups)):
            self.sums[i] += speed
        d = speed_difference(self.sums)
        self._d.append(d)
        if self.unlocked and abs(d) > self.params.threshold:
            self.curation, self.curation_step, self.caring = True, 0, 0 if d > 0 else 1
        else:
            self.curation, self.caring = False, 0

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        out = {f"diag/rebalance_{m}": n / max(self._steps, 1) for m, n in zip(model.modalities, self._rebalanced,
                                                                               strict=True)}
        finite = [d for d in self._d if math.isfinite(d)]
        if finite:
            out["diag/d_speed"] = sum(finite) / len(finite)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": list(self.sums), "unlocked": self.unlocked, "curation": self.curation, "caring": self.caring,
                "curation_step": self.curation_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = [float(x) for x in state["sums"]]
        self.unlocked, self.curation = bool(state["unlocked"]), bool(state["curation"])
        self.caring, self.curation_step = int(state["caring"]), int(state["curation_step"])
