"""drl-tune: hyperparameter studies for Diagnosing & Re-learning and balanced multimodal learning.

Floors, from the ground up (imports run only downward; ``tests/test_floors.py`` checks it, docs/architecture.md
draws it): ``ground`` (errors, io, paths, stats, domains, metrics, guard, modality, device) → ``models`` → ``data``
→ ``methods`` → ``training`` (the one epoch loop, the run configuration, the GPU path) → ``study`` (the Ray Tune
study) → ``analysis`` → the study driver (``driver``) → the commands (``python -m drl_tune.run`` …, ``bench``).
Names of earlier layouts live in ``compat``, loaded only to read a study folder they wrote.
"""

from __future__ import annotations

__version__ = "0.1.0"
