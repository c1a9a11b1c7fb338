"""CML: calibrating multimodal learning (Ma, Zhang, Zhang, Wu, Fu, Zhou & Hu, ICML 2023).

The rule: removing a modality must not raise the classifier's confidence. The official repository
(QingyangZhang/CML at 85075b5) has only incomplete-multi-view experiments (``miwae/train.py``, ``cpm/``), no
audio-visual late-fusion classifier, so this is an adaptation. The reading implemented here follows
``miwae/train.py``'s stage-2 loss step for step, with "removing a modality" meaning what it means elsewhere in
this project for a late-fusion model: that modality's pooled features are zeroed before the fusion head (the
official imputes the removed view's raw input with the training mean):

* a nested chain of M inputs per sample (``get_multi_mask``): input 0 has every modality, input k + 1 is input
  k with one more modality removed, in a random order drawn per sample and batch; each input's fused logits
  give conf_k = max softmax probability and pred_k = argmax;
* classification loss = mean over the chain of CE(logits_k) (the official ``cls_loss /= train_input_num``;
  ``cml.ce: full`` uses CE of the full input only);
* penalty, per adjacent pair and summed over the batch: Σ_i relu((conf_{k+1} − conf_k)·[pred_k = y] − ε) +
  Σ_i relu((conf_{k+1} − sg(conf_k))·[pred_{k+1} ≠ y ∧ pred_k ≠ y] − ε) — where the fuller input is right
  both confidences are pushed, where both are wrong only the partial one (sg = stop-gradient, the official
  ``.detach()``); a right partial after a wrong fuller input is not penalised;
* loss = classification + (β/100)·penalty;
* ``inner_steps`` (default 5, the official) optimizer steps per batch on the same chain: the official stage 2
  (``step = [0, 0, 5]`` at line 200, the loop at lines 274–308) draws the removal masks once per batch
  (``get_multi_mask``, line 224) and then, 5 times, runs the full forward on the same inputs and masks, computes
  the loss and takes ``zero_grad``, ``backward``, ``step``. Here the run's optimizer steps inside the batch
  (``steps_optimizer``), the inputs are encoded again at every step (the parameters changed) and the masks are
  the batch's one draw. ``train/loss`` and ``diag/cml_penalty`` are the mean over the batch's inner steps (the
  official ``train_total_cls_loss``/``train_total_rank_loss`` add up every inner step's value and are not
  printed).

``beta`` is β (``--beta``): the official default 0 switches the penalty off (plain training on the chain);
the README's run "with MCCA" uses 10, the default here. ``epsilon`` is the tolerance margin ε (``--epsilon``,
0). ``inner_steps: 1`` takes one step per batch, as the other methods here do. The rule is defined for any number
of modalities (the official chain has one input per view) and, as it only zeroes features, for every fusion.

Departures from the official code: (1) the late-fusion form above (zeroed features instead of mean-imputed raw
views; no reconstruction loss, which belongs to the MIWAE imputer); (2) the removal order is drawn from
torch's global generator (checkpointed by the engine; official: Python's ``random.shuffle``). Not reproduced:
BalanceBenchmark's ``CML_trainer`` (one reading) draws one removal order per epoch for all samples, applies
the hinge to the batch sum, max(0, Σ_i (conf_p − conf_s)), without the official masks, and its HEAD calls a
renamed ``Unimodality_Calculate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method
from drl_tune.models import ModelOutput, MultimodalClassifier

CE_INPUTS = ("chain", "full")


@dataclass
class CMLParams:
    beta: float = param(10.0, "β: the calibration penalty's weight is β/100 (0 switches it off; the CML README's run "
                              "uses 10)", ge=0)
    epsilon: float = param(0.0, "ε: tolerance margin inside the penalty's hinge", ge=0)
    ce: str = param("chain", "`chain`: cross-entropy averaged over the nested chain of inputs (official); `full`: of "
                          "the full input only", choices=CE_INPUTS)
    inner_steps: int = param(5, "optimizer steps per batch on the batch's one draw of the removal chain (official 5: "
                                "`miwae/train.py`'s stage 2); 1: one step per batch", ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "cml.")  # the numbers' domains are declared on the fields (ground/domains.py)


def removal_masks(n: int, m: int, device: torch.device) -> list[torch.Tensor]:
    """The chain's keep masks [n, m] (float): all ones, then one more modality removed per step, in a random
    order per row (torch's global generator)."""
    order = torch.rand(n, m).argsort(dim=1).to(device)
    keep = torch.ones(n, m, device=device)
    masks = [keep.clone()]
    rows = torch.arange(n, device=device)
    for k in range(m - 1):
        keep[rows, order[:, k]] = 0.0
        masks.append(keep.clone())
    return masks


def calibration_penalty(chain: list[torch.Tensor], labels: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """The official rank loss over adjacent inputs of ``chain`` (logits, fullest first)."""
    probs = [torch.softmax(z.float(), dim=1) for z in chain]
    conf_pred = [p.max(dim=1) for p in probs]
    total = chain[0].new_zeros((), dtype=torch.float32)
    for (conf, pred), (conf_next, pred_next) in zip(conf_pred, conf_pred[1:], strict=False):
        right = (pred == labels).to(conf.dtype)
        both_wrong = ((pred_next != labels) & (pred != labels)).to(conf.dtype)
        total = total + F.relu((conf_next - conf) * right - epsilon).sum()
        total = total + F.relu((conf_next - conf.detach()) * both_wrong - epsilon).sum()
    return total


class CML(Method):
    name = "cml"
    Params = CMLParams
    params: CMLParams
    steps_optimizer = True  # inner_steps steps of the run's optimizer per batch

    def __init__(self, params: CMLParams) -> None:
        super().__init__(params)
        self._model: MultimodalClassifier | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._diag = EpochMeans()  # diag/cml_penalty, per batch (the mean over its inner steps)

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        self._model = model
        self.optimizer = optimizer

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self._model = model
        self._diag.reset()

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        """``inner_steps`` times: encode, the chain's loss under the batch's one draw of removal masks, backward,
        step (the engine cleared the gradients before the first)."""
        assert self.optimizer is not None
        self._model = model
        masks: list[torch.Tensor] | None = None
        losses, penalties = [], []
        for step in range(self.params.inner_steps):
            if step:
                self.optimizer.zero_grad()
            modified = self.modify_features(model.encode(batch.inputs), batch.labels, batch)
            assert modified is not None  # the default modify_features never skips a batch
            features, labels = modified
            if masks is None:
                masks = removal_masks(len(labels), len(features), labels.device)
            loss, penalty = self.chain_loss(ModelOutput(model.fuse(features), features), labels, masks)
            if not torch.isfinite(loss):
                return loss.detach()  # the engine stops the run with a clear error
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
            penalties.append(penalty.detach())
        self._diag.add("cml_penalty", torch.stack(penalties).mean())
        return torch.stack(losses).mean()

    def chain_logits(self, outputs: ModelOutput, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The fused logits of every input of the chain ``masks`` (keep masks [n, M], the first all ones)."""
        assert self._model is not None
        feats = outputs.features
        chain = [outputs.logits]
        for keep in masks[1:]:
            chain.append(self._model.fuse({m: f * keep[:, i : i + 1].to(f.dtype) for i, (m, f) in
                                           enumerate(feats.items())}))
        return chain

    def chain_loss(self, outputs: ModelOutput, labels: torch.Tensor, masks: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, penalty) of one step on the chain ``masks``: classification + (β/100)·penalty."""
        chain = self.chain_logits(outputs, masks)
        if self.params.ce == "chain":
            ce = sum(F.cross_entropy(z, labels) for z in chain) / len(chain)
        else:
            ce = F.cross_entropy(chain[0], labels)
        penalty = calibration_penalty(chain, labels, self.params.epsilon)
        return ce + self.params.beta / 100.0 * penalty, penalty

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()
