"""drl-tune: hyperparameter studies for Diagnosing & Re-learning and balanced multimodal learning."""

__version__ = "0.1.0"
