"""The hook protocol every method implements; the engine's one epoch loop calls these hooks.

A method changes training only through hooks, so comparing methods never means comparing training
loops. Per run: ``extra_modules`` (trainable modules the method adds, e.g. MMPareto's uni-modal heads —
built before the optimizer so it trains them) and ``setup``. Per epoch: ``on_epoch_start`` and
``training_rows`` (which training samples the epoch visits, with repeats and per-row modality masks —
modality valuation's resampling), then per batch ``training_step``, then ``on_epoch_end`` after the
evaluation. ``state_dict``/``load_state_dict`` carry everything the next epochs depend on, so an
interrupted run resumes exactly.

The default ``training_step`` is plain joint training, split into the hooks most methods override:

    features = encode_batch(model, inputs)                         # default: model.encode
    features, labels = modify_features(features, labels, batch)   # OPM drops features; None skips the batch
    outputs = ModelOutput(model.fuse(features), features)
    loss = loss(outputs, labels);  loss.backward()
    after_backward(model)                                          # OGM-GE / InfoReg touch the gradients

A method that needs several backward passes (MMPareto) overrides ``training_step`` itself. The engine then
checks the returned loss is finite and steps the optimizer. Randomness inside hooks uses torch's global
generator, whose state the engine checkpoints (so resumed runs draw the same numbers).

Small extensions serve the rules that train in steps, stages, nested runs or uni-modal batches (MLA, ReconBoost,
UMT, G-Blending, Data Remixing), so that none of them copies the epoch loop:

* ``steps_optimizer = True`` (a class attribute): ``training_step`` steps the optimizer itself, as often and over
  whichever parameters its rule says (MLA: the run's optimizer once per modality per batch; ReconBoost: its own
  per-stage optimizer over the stage's parameters). The engine still clears the gradients before the step and
  still counts the returned loss, but does not step its optimizer after it. Optimizers a method builds are its
  state: ``state_dict`` carries them (:func:`like_optimizer` builds one of the run's kind and settings).
* ``ctx.train_batches(indices, training)`` (:class:`EpochContext`): batches of chosen *training* samples through
  the engine's own batch preparation, for training passes outside the epoch's batches (UMT's teachers before
  the first epoch, G-Blending's nested re-estimation on a held-out part of the training split). Training batches
  are shuffled and augmented with the engine's generator, which the checkpoint holds, so a resumed run draws the
  same batches. Validation and test data are not reachable through it: no method trains or selects on them.
* ``batch_by_keep = True`` (a class attribute): the epoch's rows are batched per keep pattern — the rows that keep
  the same modalities are shuffled and batched among themselves, one pattern after another in the order of each
  pattern's first row in ``training_rows`` — so that every batch holds one pattern only (Data Remixing's uni-modal
  batches). The default shuffles all rows together.
* ``eval_logits(model, features)``: the class logits evaluation scores (val/test accuracy and macro-F1) from
  eval-mode features; the default is the fused head. MLA fuses its shared head's uni-modal outputs by their
  entropies, ReconBoost sums its learners' outputs.

One more serves a rule that changes the encoders' forward itself (Greedy's MMTM blocks between the two ResNet
trunks), so that training and evaluation run the same forward:

* ``encode_batch(model, inputs)``: a batch's pooled features per modality. The default is ``model.encode``;
  the default ``training_step`` and every evaluation-mode pass of the engine (val/test logits, the probe's and
  ``ctx.features``' features) call it. A method overriding it runs its own ``training_step`` through it too
  (methods that encode in their own ``training_step`` with ``model.encode`` do not override it). Modules it adds
  come from ``extra_modules``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.errors import ConfigError
from drl_tune.models import ModelOutput, MultimodalClassifier
from drl_tune.models.fusion import ConcatFusion, SumFusion


@dataclass
class NoParams:
    """A method without hyperparameters of its own."""


@dataclass
class Batch:
    """One training batch. ``keep`` [B, M] (modality order of the model) is False where that modality's
    features are zeroed for that row (modality valuation's re-sampled copies); None = keep everything."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    keep: torch.Tensor | None = None


class EpochContext(Protocol):
    """What the engine offers a method around an epoch."""

    epoch: int  # the 0-based index of the epoch being trained (on_epoch_start) or just trained (on_epoch_end)
    optimizer: torch.optim.Optimizer

    @property
    def n_classes(self) -> int: ...

    @property
    def seed(self) -> int: ...

    @property
    def batch_size(self) -> int:
        """The training batch size."""
        ...

    @property
    def n_train(self) -> int:
        """The training split's size."""
        ...

    def features(self, split: str, indices: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Eval-mode pooled features of every sample of ``split`` (or of the samples ``indices`` of it) per
        modality, and their labels. The model is left in eval mode; the engine sets train mode afterwards."""
        ...

    @property
    def epochs(self) -> int:
        """The run's number of epochs."""
        ...

    def train_batches(self, indices: np.ndarray, training: bool = True, modalities: list[str] | None = None
                      ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """(inputs, labels) batches of the training samples ``indices``, prepared as the engine prepares its own.
        ``training``: shuffled by the engine's generator, ``batch_size`` each (a batch of one dropped), augmented
        when ``data.augment`` is on — the epoch's batches' recipe; otherwise in the given order, ``eval.batch_size``
        each, never augmented. ``modalities``: prepare only these inputs (default: all). Each batch is valid until
        the next is drawn (the engine reuses its memory); the model's mode (train/eval) is the caller's."""
        ...


class Method:
    """Base class: joint training with cross-entropy on the fused logits, no extra behaviour."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # how many modalities the authors' rule is defined for (None: any number); a study checks it against the
    # dataset before anything starts (driver.check_methods_fit), a run when it builds the method (Engine), both
    # through modality_mismatch
    modalities: ClassVar[int | None] = None
    # the fewest modalities a rule defined for any number needs (AMCo and MBSD compare or mask them: two); checked
    # the same way
    min_modalities: ClassVar[int] = 1
    # True: training_step steps the optimizer(s) itself; the engine then skips its own step (module docstring)
    steps_optimizer: ClassVar[bool] = False
    # True: each training batch holds rows of one keep pattern only (module docstring; the engine's _row_batches)
    batch_by_keep: ClassVar[bool] = False
    # keys renamed: old field name -> (new field name, the date of the rename); the old key is still read, with a
    # one-line notice, until the deprecation is retired (training.config.canonical_key)
    renamed_params: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init__(self, params: Any) -> None:
        self.params = params

    # -- once per run ----------------------------------------------------------------------------------

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        """Trainable modules the method adds (attached to the model as ``model.method_modules`` before the
        optimizer is built, so they are trained, checkpointed and moved to the device with it)."""
        return {}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        """Called once, before the first epoch (not again on resume: ``load_state_dict`` is). Refuse an
        unsupported model here with a :class:`ConfigError`."""

    # -- per epoch -------------------------------------------------------------------------------------

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        """Before the epoch's first batch (``ctx.epoch`` is the epoch about to be trained); the engine puts the
        model in train mode after it returns, so eval-mode features may be read here (``ctx.features``)."""

    def training_rows(self, n_train: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The epoch's training set as rows: sample indices (repeats allowed) and an optional [rows, M]
        bool mask of kept modalities. The engine shuffles the rows. Default: every sample once, all kept."""
        return np.arange(n_train), None

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        """After the epoch's evaluation; may change the model; returns extra metrics for this epoch."""
        return {}

    # -- per batch -------------------------------------------------------------------------------------

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        """Forward, loss, backward; gradients are left in ``.grad`` for the engine's optimizer step.
        Returns the (detached) loss, or None to skip the batch without a step."""
        modified = self.encoded(model, batch)
        if modified is None:
            return None
        features, labels = modified
        outputs = ModelOutput(model.fuse(features), features)
        loss = self.loss(outputs, labels)
        if not torch.isfinite(loss):
            return loss.detach()  # the engine stops the run with a clear error
        loss.backward()
        self.after_backward(model)
        return loss.detach()

    def encode_batch(self, model: MultimodalClassifier, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's pooled features of a batch; training and evaluation both encode through it (the model's
        mode tells which). Default: ``model.encode``."""
        return model.encode(inputs)

    def encoded(self, model: MultimodalClassifier, batch: Batch
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """The default step's first half, also for methods that write their own ``training_step``: the batch's
        features (``encode_batch``) after ``modify_features``, with its labels; None = skip the batch."""
        return self.modify_features(self.encode_batch(model, batch.inputs), batch.labels, batch)

    def modify_features(
        self, features: dict[str, torch.Tensor], labels: torch.Tensor, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """Between the encoders and the fusion. Default: zero the modalities ``batch.keep`` masks out."""
        if batch.keep is None:
            return features, labels
        keep = batch.keep.to(next(iter(features.values())).dtype)
        return {m: f * keep[:, i : i + 1] for i, (m, f) in enumerate(features.items())}, labels

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.logits, labels)

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are in ``.grad``; the optimizer step follows."""

    # -- evaluation ------------------------------------------------------------------------------------

    def eval_logits(self, model: MultimodalClassifier, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The class logits evaluation scores, from eval-mode pooled features (no gradient). Default: the fused
        head."""
        return model.fuse(features)

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


# ---------------------------------------------------------------------------------------------------------
# helpers shared by the comparator methods


class EpochMeans:
    """A method's per-epoch diagnostics: ``add(name, value)`` per step, ``means()`` at the epoch's end gives
    ``diag/<name>`` = the mean of that name's values this epoch (only names added at least once). A tensor is
    summed where it lives and read once, at the end: a ``float()`` per step would make the host wait for every GPU
    step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: float | torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self._sums[name] = self._sums.get(name, 0.0) + value
        self._counts[name] = self._counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {f"diag/{name}": float(total) / self._counts[name] for name, total in self._sums.items()}


def like_optimizer(optimizer: torch.optim.Optimizer, params: Any) -> torch.optim.Optimizer:
    """A fresh optimizer of ``optimizer``'s kind and settings (the run's ``optimizer``, ``lr``, ``momentum``,
    ``weight_decay``) over ``params`` — for rules that step their own parameter subsets or copies."""
    return type(optimizer)(params, **optimizer.defaults)


def shared_width(model: MultimodalClassifier, method: str) -> int:
    """The one feature width every encoder has, for a head shared by all modalities; refuse unequal widths."""
    widths = {m: model.feature_width(m) for m in model.modalities}
    if len(set(widths.values())) != 1:
        listed = ", ".join(f"{m} {d}" for m, d in widths.items())
        raise ConfigError(f"method {method} applies one head to every modality's features, which needs equal feature "
                          f"widths; these are {listed} (a feature modality's width is model.feature_hidden)")
    return next(iter(widths.values()))


def check_window(params: Any, prefix: str) -> None:
    """A method's ``modulation_starts``/``modulation_ends`` window (each number's own domain is declared on its
    field): the window must not end before it starts."""
    if params.modulation_ends < params.modulation_starts:
        raise ConfigError(f"{prefix}modulation_starts/{prefix}modulation_ends need 0 <= starts <= ends, got "
                          f"{params.modulation_starts} and {params.modulation_ends}")


COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


def modality_mismatch(method: type[Method], name: str, modalities: list[str]) -> str | None:
    """Why ``method`` (registered as ``name``) cannot run on ``modalities`` — its rule is defined for another number
    of them (``Method.modalities``) — or None when it can."""
    wanted = method.modalities
    if wanted is None:
        if len(modalities) >= method.min_modalities:
            return None
        count = COUNT_WORDS.get(method.min_modalities, str(method.min_modalities))
        return (f"method {name} needs {count} or more modalities, this run has {len(modalities)} "
                f"({', '.join(modalities)}); set data.modalities to {count} or more of them")
    if wanted == len(modalities):
        return None
    count = COUNT_WORDS.get(wanted, str(wanted))
    return (f"method {name} is defined for exactly {count} modalities, this run has {len(modalities)} "
            f"({', '.join(modalities)}); set data.modalities to {count} of them")


def require_unimodal_head(model: MultimodalClassifier, method: str) -> None:
    """Refuse fusions whose output layer has no per-modality part (see :func:`unimodal_logits`)."""
    if not isinstance(model.fusion, (ConcatFusion, SumFusion)):
        kind = type(model.fusion).__name__
        raise ConfigError(
            f"method {method} reads uni-modal logits off the fused head, which {kind} does not have (its "
            f"output layer sees both modalities mixed); use fusion=concat (the official setting) or sum"
        )


def unimodal_logits(
    model: MultimodalClassifier, features: dict[str, torch.Tensor], detach_head: bool = False
) -> dict[str, torch.Tensor]:
    """Each modality's logits read off the fused classification head, as the official OGM-GE/OPM/InfoReg code.

    * concat: ``logits_m = f_m · W[:, cols_m]ᵀ + b / M`` — the weight columns that multiply modality m and
      an equal share of the bias (b/2 for two modalities, as the official code);
    * sum: ``logits_m = W_m f_m + b_m`` — that modality's own linear layer with its own full bias (the
      official OGM-GE code uses b_m/2 here too; we keep each layer's own full bias, so that Σ_m logits_m is
      exactly the fused logits, as the issue specifies);
    * FiLM and gated fusion have no such decomposition (the output layer sees γ⊙f₂+β or σ(W₁f₁)⊙W₂f₂, both
      modalities multiplied together), so methods that need uni-modal logits refuse them
      (:func:`require_unimodal_head`).

    ``detach_head`` reads the head weights without gradient (OPM: ``weight.clone().detach()``).
    """
    fusion = model.fusion
    out: dict[str, torch.Tensor] = {}
    weight: torch.Tensor
    bias: torch.Tensor
    if isinstance(fusion, ConcatFusion):
        weight, bias = fusion.fc_out.weight, fusion.fc_out.bias
        if detach_head:
            weight, bias = weight.detach(), bias.detach()
        start = 0
        for m in model.modalities:
            f = features[m]
            out[m] = f @ weight[:, start : start + f.shape[1]].t() + bias / len(model.modalities)
            start += f.shape[1]
        return out
    if isinstance(fusion, SumFusion):
        for fc, m in zip(fusion.layers(), model.modalities, strict=True):
            weight, bias = (fc.weight.detach(), fc.bias.detach()) if detach_head else (fc.weight, fc.bias)
            out[m] = features[m] @ weight.t() + bias
        return out
    require_unimodal_head(model, "this method")
    raise AssertionError("unreachable")


class HeadScoredMethod(Method):
    """A comparator that compares two modalities by their uni-modal logits read off the fused head (OGM-GE,
    OPM, InfoReg): :meth:`setup` refuses fusions without them, :meth:`head_scores` gives each modality's batch
    score."""

    modalities: ClassVar[int | None] = 2

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)

    @staticmethod
    def head_scores(model: MultimodalClassifier, features: dict[str, torch.Tensor], labels: torch.Tensor,
                    detach_head: bool = False) -> dict[str, float]:
        """:func:`batch_scores` of :func:`unimodal_logits`, without gradient."""
        with torch.no_grad():
            return batch_scores(unimodal_logits(model, features, detach_head=detach_head), labels)


def batch_score_tensors(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """score_m = Σ_i softmax(logits_m)[i, y_i] — the batch-summed confidence in the true class that
    OGM-GE, OPM and InfoReg compare between modalities — as 0-d tensors that keep the graph of ``logits``
    (OPM's official θ gradient flows through them)."""
    return {m: torch.softmax(z.float(), dim=1).gather(1, labels.view(-1, 1)).sum() for m, z in logits.items()}


def batch_scores(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """:func:`batch_score_tensors` as plain numbers, without gradient."""
    with torch.no_grad():
        return {m: float(score) for m, score in batch_score_tensors(logits, labels).items()}
