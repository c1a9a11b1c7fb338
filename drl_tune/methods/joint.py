"""Joint training: cross-entropy on the fused logits — the baseline every balancing method is judged by."""

from __future__ import annotations

from drl_tune.methods.base import Method


class Joint(Method):
    """Plain joint training; all behaviour is the base class's."""

    name = "joint"
