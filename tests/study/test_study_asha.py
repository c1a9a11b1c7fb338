"""DRL's re-initialisation dip must not get a trial stopped by ASHA — proved on the real ASHAScheduler that
the demo study builds, fed the per-epoch results of a DRL trial whose dip falls exactly on the first rung.

The demo scheduler's first rung comes after ``grace_period`` reports (3). A DRL trial with
drl.diagnosis_interval = grace_period - 2 (1) re-initialises after 0-based epoch 1, so its val/acc dips at
epoch 2 — the 3rd report, the rung. The study schedules on val/acc_best (a running best), which cannot dip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from drl_tune.methods.drl import DRL, DRLParams
from drl_tune.study.plan import build_plan
from drl_tune.study.spaces import load_space
from drl_tune.study.tune import make_scheduler

# val/acc per epoch; DRL re-initialises after epoch 1 and dips at epoch 2, then recovers past the baseline
JOINT = [0.40, 0.55, 0.60, 0.62, 0.63, 0.63, 0.64, 0.64, 0.64, 0.65]
DRL_DIP = [0.40, 0.62, 0.45, 0.58, 0.66, 0.68, 0.69, 0.70, 0.70, 0.71]
WEAK = [0.20, 0.22, 0.25, 0.27, 0.28, 0.30, 0.30, 0.31, 0.31, 0.31]


def feed(scheduler, trial_id: str, accs: list[float]) -> list[str]:
    """Report ``accs`` epoch by epoch as the trainable does; the scheduler's decision per report."""
    trial = SimpleNamespace(trial_id=trial_id, config={}, evaluated_params={})
    scheduler.on_trial_add(None, trial)
    decisions, best = [], -1.0
    for epoch, acc in enumerate(accs):
        best = max(best, acc)
        result = {"training_iteration": epoch + 1, "epoch": float(epoch), "val/acc": acc, "val/acc_best": best}
        decision = scheduler.on_trial_result(None, trial, result)
        decisions.append(decision)
        if decision == TrialScheduler.STOP:
            break
    return decisions


def ran_to_the_end(decisions: list[str], accs: list[float]) -> bool:
    """Never stopped before its last epoch (ASHA answers STOP at max_t, the natural end)."""
    return len(decisions) == len(accs) and TrialScheduler.STOP not in decisions[:-1]


def demo_scheduler(metric: str | None = None):
    space = load_space("demo")
    plan = build_plan(space, overrides={}, name="t", storage=Path("/tmp"), mlflow_uri="x")
    spec = plan.scheduler if metric is None else dataclasses.replace(plan.scheduler, metric=metric)
    return make_scheduler(spec), spec


def test_the_dip_lands_on_the_demo_rung():
    _, spec = demo_scheduler()
    drl = DRL(DRLParams(diagnosis_interval=spec.grace_period - 2, max_reinits=3))
    first_reinit = next(e for e in range(20) if drl.is_diagnosis_epoch(e))
    dip_report = first_reinit + 2  # the epoch after the re-init, as a 1-based training_iteration
    assert spec.grace_period == dip_report
    assert DRL_DIP[dip_report - 1] < JOINT[dip_report - 1] and max(DRL_DIP[:dip_report]) > max(JOINT[:dip_report])


def test_a_per_epoch_metric_would_kill_the_drl_trial_in_its_dip():
    scheduler, spec = demo_scheduler(metric="val/acc")  # what the study deliberately does not do
    assert ran_to_the_end(feed(scheduler, "joint", JOINT), JOINT)
    decisions = feed(scheduler, "drl", DRL_DIP)
    assert decisions[-1] == TrialScheduler.STOP and len(decisions) == spec.grace_period  # in the dip


def test_the_study_scheduler_keeps_the_dipping_drl_trial_and_still_stops_weak_ones():
    scheduler, spec = demo_scheduler()
    assert spec.metric == "val/acc_best"
    assert ran_to_the_end(feed(scheduler, "joint", JOINT), JOINT)
    decisions = feed(scheduler, "drl", DRL_DIP)
    assert ran_to_the_end(decisions, DRL_DIP)  # survives the dip, recovers
    weak = feed(scheduler, "weak", WEAK)
    # ASHA still prunes a trial that never got going
    assert weak[-1] == TrialScheduler.STOP and len(weak) == spec.grace_period
