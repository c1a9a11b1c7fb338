"""Measurement commands that run the engine on fixed settings (``python -m drl_tune.experiments.<name>``)."""
