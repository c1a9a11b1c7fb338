"""Method registry: a method is one file implementing the hooks of methods/base.py plus one line here."""

from __future__ import annotations

from drl_tune.methods.base import EpochContext, Method, NoParams
from drl_tune.methods.drl import DRL
from drl_tune.methods.joint import Joint

REGISTRY: dict[str, type[Method]] = {
    Joint.name: Joint,
    DRL.name: DRL,
}

__all__ = ["REGISTRY", "EpochContext", "Method", "NoParams"]
