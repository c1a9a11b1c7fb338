"""Typed run configuration: plain dataclasses you can print, built from nested or flat ``a.b`` keys.

Every value that reaches the engine passes through :func:`build`, which checks unknown keys (naming the
allowed ones) and converts values by the field's declared type — so ``--set epochs=6`` becomes the int 6,
never the string "6", and a typo fails before anything runs.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from drl_tune.data.config import AVDIGITS_LANGUAGES, AVDigitsConfig, DataConfig, SyntheticConfig  # noqa: F401  (the data's blocks of a run)
from drl_tune.ground.domains import DOMAIN, bounded, check, check_fields
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.modality import SEQUENCE_ENCODERS
from drl_tune.methods import REGISTRY


@dataclass
class ModelConfig:
    """``width`` is ResNet18's base channel count (64 in the paper); smaller is quicker on a CPU. The ``feature_*``
    keys size the encoders of precomputed-feature modalities (a manifest's ``NAME:features`` columns): every such
    modality gets the same sizes."""

    width: int = bounded(64, ge=1)
    feature_hidden: int = bounded(128, ge=1)
    feature_layers: int = bounded(2, ge=1)
    sequence_encoder: str = "conv"
    feature_heads: int = bounded(4, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "model.")
        if self.sequence_encoder not in SEQUENCE_ENCODERS:
            raise ConfigError(f"model.sequence_encoder must be one of {', '.join(SEQUENCE_ENCODERS)}, got "
                              f"{self.sequence_encoder!r}")
        if self.sequence_encoder == "transformer" and self.feature_hidden % self.feature_heads:
            raise ConfigError(f"model.feature_hidden ({self.feature_hidden}) must be a multiple of "
                              f"model.feature_heads ({self.feature_heads}) for the Transformer encoder")


@dataclass
class EvalConfig:
    """How uni-modal accuracy is measured: a linear probe on each frozen encoder's pooled features,
    fitted on (at most ``probe_samples``) training samples and scored on the validation split."""

    probe_samples: int = bounded(2000, ge=10)
    batch_size: int = bounded(256, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "eval.")


@dataclass
class PerfConfig:
    """Speed switches of the GPU path (drl_tune/training/accel.py). Each acts only on a CUDA device, so a CPU run is
    the same computation whatever they say; set one false to rule it out when a GPU result looks wrong."""

    bf16: bool = True  # bf16 autocast of the encoders' forward (features and loss stay float32)
    channels_last: bool = True  # NHWC weights and activations (tensor-core friendly convolutions)
    pin_memory: bool = True  # gather batches into pinned host buffers, copy them non-blocking
    gpu_augment: bool = True  # crop/flip/normalise batch-wise on the GPU (false: on the host, then copy)
    compile: bool = False  # torch.compile the encoders (minutes of compilation; pays off in long trials)


@dataclass
class TrainConfig:
    """One run. Defaults are the official CREMA-D settings of the DRL code (SGD 2e-3, momentum 0.9,
    weight decay 1e-4, batch 64, 90 epochs). ``method_params`` holds one block per registered method,
    keyed by its registry name (``drl.lam`` ...)."""

    method: str = "joint"
    epochs: int = bounded(90, ge=1)
    lr: float = bounded(2e-3, gt=0)
    optimizer: str = "sgd"
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(1e-4, ge=0)
    batch_size: int = bounded(64, ge=2)
    fusion: str = "concat"
    seed: int = bounded(0, ge=0, le=2**32 - 1)  # numpy's seeds are 32-bit
    device: str = "auto"
    threads: int = bounded(0, ge=0, le=1024)  # 0 = torch's default
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    method_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)  # the numbers' domains are declared on the fields (ground/domains.py)
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def params(self) -> Any:
        """The chosen method's parameter block."""
        return self.method_params[self.method]

    def to_flat(self) -> dict[str, Any]:
        """Every value under its ``a.b`` key (the names used by ``--set``, Tune and MLflow)."""
        flat = flatten(dataclasses.asdict(self))
        for key in [k for k in flat if k.startswith("method_params.")]:
            flat[key.removeprefix("method_params.")] = flat.pop(key)
        return flat


# ---------------------------------------------------------------------------------------------------------
# building typed configs from mappings


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}``; nested dicts are merged."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"key {key!r}: {part!r} is a value, not a block")
            node = child
        if isinstance(value, dict):
            value = unflatten(value)
            existing = node.get(parts[-1])
            if isinstance(existing, dict):
                existing.update(value)
                continue
        node[parts[-1]] = value
    return out


def _convert(value: Any, typ: Any, key: str) -> Any:
    """Convert ``value`` to the declared type; strings (from ``--set``) are parsed by that type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(typ) if t is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(value, options[0], key)
    if origin is list:
        (item,) = typing.get_args(typ)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key} must be a list (or comma-separated), got {value!r}")
        return [_convert(v.strip() if isinstance(v, str) else v, item, key) for v in items if v != ""]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys with the allowed ones."""
    hints = typing.get_type_hints(cls)
    domains = {f.name: f.metadata.get(DOMAIN) for f in dataclasses.fields(cls)}
    names = set(domains)
    unknown = sorted(set(values) - names)
    if unknown:
        allowed = ", ".join(sorted(prefix + n for n in names if n != "method_params"))
        key, value = prefix + unknown[0], values[unknown[0]]
        while isinstance(value, dict) and value:  # name the whole key the user wrote (a.b.c), not its first part
            first = next(iter(value))
            key, value = f"{key}.{first}", value[first]
        raise ConfigError(f"unknown key {key!r}; allowed here: {allowed}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix + name} is a block of keys, got the value {value!r}")
            kwargs[name] = build(typing.cast(type, typ), value, prefix + name + ".")  # a field's hint: a class
        else:
            converted = _convert(value, typ, prefix + name)
            for item in converted if isinstance(converted, list) else [converted]:
                check(item, domains[name], prefix + name)  # finite, and inside the field's declared domain
            kwargs[name] = converted
    return cls(**kwargs)


_NOTED: set[str] = set()


def canonical_key(key: str, notice: bool = True) -> str:
    """``key`` under its current name: a method's renamed key (``Method.renamed_params``, e.g. ``drl.lam`` ->
    ``drl.lam``) is mapped, with a one-line notice on stderr the first time in a process (``notice``: readers of an
    old study's records map silently)."""
    method, _, field_name = key.partition(".")
    renamed = getattr(REGISTRY.get(method), "renamed_params", {}).get(field_name)
    if renamed is None:
        return key
    new = f"{method}.{renamed[0]}"
    if notice and key not in _NOTED:
        _NOTED.add(key)
        print(f"note: {key} is deprecated since {renamed[1]}; use {new} (read as {new} for now)", file=sys.stderr)
    return new


def canonical_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every flat key (and every key of a method's nested block) under its current name; an old and a
    new name of one key given together is refused."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if str(key) in REGISTRY and isinstance(value, dict):  # a nested method block: {"drl": {"alpha": 3}}
            value = {canonical_key(f"{key}.{k}").partition(".")[2]: v for k, v in value.items()}
        new = canonical_key(str(key))
        if new in out and new != key:
            raise ConfigError(f"{key} and {new} are the same key (the old and the new name); give only {new}")
        out[new] = value
    return out


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from nested and/or flat keys; method blocks come from the registry."""
    nested = unflatten(canonical_keys(values))
    method_values = {name: nested.pop(name, {}) for name in REGISTRY}
    for name, block in method_values.items():
        if not isinstance(block, dict):
            raise ConfigError(f"{name} is a block of method parameters, got the value {block!r}")
    method = str(nested.get("method", TrainConfig.method))
    if method not in REGISTRY:
        raise ConfigError(f"unknown method {method!r}; registered methods: {', '.join(sorted(REGISTRY))}")
    config = build(TrainConfig, nested)
    config.method_params = {
        name: build(REGISTRY[name].Params, method_values[name], name + ".") for name in REGISTRY
    }
    return config


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; values stay strings until :func:`build` types them."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[canonical_key(key.strip())] = value.strip()
    return out
