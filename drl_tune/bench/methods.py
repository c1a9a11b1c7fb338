"""``python -m drl_tune.bench methods``: each registered method's epoch cost relative to joint training.

Every method gets its own :class:`~drl_tune.training.engine.Engine` on the demo space's data and model (its official
setting: the demo space's defaults, the method's own defaults), all in this one process with one torch thread, and
the methods take turns epoch by epoch (round robin), so a change of the machine's load falls on all of them alike.
An epoch is timed in CPU time of this process (``time.process_time``), which another process's load on a shared
machine disturbs far less than wall time. Reported per method, as ratios to joint measured in the same rounds:

* ``first_epoch_ratio``: epoch 0, with the one-off costs some methods pay there (UMT's teacher stage, an offline
  G-Blending estimate);
* ``epoch_ratio``: the mean of the later epochs (what a run pays per epoch).

A method's own periodic work (DRL's diagnosis, G-Blending's online re-estimates) falls where its setting puts it;
``--set`` changes the shared configuration (e.g. ``drl.diagnosis_interval=1`` to time a diagnosis every epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from drl_tune.ground.errors import ConfigError
from drl_tune.training.config import parse_assignments

Log = Callable[[str], None]


def run_methods_bench(*, methods: list[str] | None = None, epochs: int = 3, overrides: list[str] | None = None,
                      space: str = "demo", log: Log = print) -> dict[str, Any]:
    """Time ``epochs`` epochs of every method (or of ``methods``, joint always included) in turns; see the module
    docstring."""
    import torch

    from drl_tune.data import load_dataset
    from drl_tune.methods import REGISTRY
    from drl_tune.study.spaces import load_space
    from drl_tune.training.engine import Engine

    names = list(dict.fromkeys(["joint", *(methods or REGISTRY)]))
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise ConfigError(f"--methods: unknown method {unknown[0]!r}; registered: {', '.join(REGISTRY)}")
    loaded = load_space(space)
    shared = {**parse_assignments(overrides or []), "threads": "1", "epochs": str(epochs)}
    previous_threads = torch.get_num_threads()
    data = None
    engines: dict[str, Engine] = {}
    for name in names:
        config = loaded.config({**shared, "method": name})
        data = data if data is not None else load_dataset(config.data)  # one copy of the data for every engine
        engines[name] = Engine(config, data)
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for epoch in range(epochs):
            for name, engine in engines.items():
                start = time.process_time()
                engine.run_epoch()
                times[name].append(time.process_time() - start)
            log(f"methods: epoch {epoch} " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
    finally:
        torch.set_num_threads(previous_threads)
    joint = times["joint"]
    later = (lambda t: sum(t[1:]) / len(t[1:])) if epochs > 1 else (lambda t: t[0])
    result: dict[str, Any] = {"space": space, "epochs": epochs, "cpu_seconds": times, "methods": {}}
    for name in names:
        result["methods"][name] = {"first_epoch_ratio": times[name][0] / joint[0],
                                   "epoch_ratio": later(times[name]) / later(joint)}
    width = max(len(n) for n in names)
    log(f"methods: CPU time per epoch relative to joint (1 thread, space {space}, {epochs} epochs each, in turns; "
        f"joint {joint[0]:.2f} s at epoch 0, {later(joint):.2f} s later)")
    log(f"  {'method':<{width}}  epoch 0  later epochs")
    for name, r in result["methods"].items():
        log(f"  {name:<{width}}  {r['first_epoch_ratio']:7.2f}  {r['epoch_ratio']:12.2f}")
    return result
