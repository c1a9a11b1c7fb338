"""The study: a space file becomes a plan (``plan``, ``spaces``, ``params``), the plan a Ray Tune run (``tune``:
Tuner, searcher, ASHA; ``trainable``: one trial), tracked in MLflow (``tracking``), confirmed over fresh seeds
(``confirmation``; its result as files and text: ``answer``), made robust to faults (``faults``, ``history``,
``ray_session``, ``cluster``), printed (``tables``) with credentials redacted (``safety``)."""
