"""The confirmation stage end to end on a real local Ray and MLflow: exactly K × N × methods confirmation trials
with fresh seeds, one MLflow child each, and an answer whose numbers are those of the trials (read back
independently from MLflow); bad input to ``python -m drl_tune.confirm``; an interrupted confirmation resumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from drl_tune import confirm
from drl_tune.ground.stats import paired_difference, t_interval
from drl_tune.run import main
from drl_tune.study.plan import PLAN_FILE
from tests.conftest import EPOCHS, SEEDS
from tests.e2e.test_study_e2e import tiny_sets

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1}
defaults: {method: drl, lr: 0.05, drl.diagnosis_interval: 1, drl.max_reinits: 1}
search:
  method: {type: choice, values: [joint, drl]}
  lr: {type: choice, values: [0.05, 0.02]}
  drl.lam: {type: uniform, low: 1, high: 5}
scheduler: {type: none}
study: {num_samples: 4, max_concurrent: 2, seed: 5, max_failures: 0, overrides: {epochs: 2},
        confirm: {top_k: 1, seeds: 2}}
resources: {cpus_per_trial: 1}
"""
ROOT = Path(__file__).resolve().parents[2]


def last(client: MlflowClient, run_id: str, key: str) -> float:
    history = client.get_metric_history(run_id, key)
    return max(history, key=lambda m: m.step).value


def at_best(client: MlflowClient, run_id: str, key: str) -> float:
    best_epoch = last(client, run_id, "best_epoch")
    return next(m.value for m in client.get_metric_history(run_id, key) if m.step == best_epoch)


@pytest.mark.slow
def test_study_with_confirmation(confirmed_study, capsys):
    """The session's shared study (tests/conftest.py): 4 search trials, the best configuration of each method
    re-trained on 2 fresh seeds."""
    study, storage, name, out = (confirmed_study[k] for k in ("dir", "storage", "name", "out"))
    plan = confirmed_study["plan"]
    assert (plan.confirm_top_k, plan.confirm_seeds) == (1, SEEDS)

    client = MlflowClient(plan.mlflow_uri)
    runs = client.search_runs([plan.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    search = [r for r in runs if r.data.tags["drl_tune.stage"] == "search"]
    confirmed = [r for r in runs if r.data.tags["drl_tune.stage"] == "confirm"]
    assert len(search) == 4
    assert len(confirmed) == 2 * 1 * 2  # methods × top_k × seeds, one child run each
    assert len({r.data.tags["drl_tune.trial_id"] for r in confirmed}) == 4
    search_seeds = {int(r.data.params["seed"]) for r in search}
    seeds = {int(r.data.params["seed"]) for r in confirmed}
    fresh = [s for s in range(1, 100) if s not in search_seeds][:SEEDS]  # the smallest seeds the search never used
    assert seeds == set(fresh) and not seeds & search_seeds
    assert {r.data.params["method"] for r in confirmed} == {"joint", "drl"}
    search_ids = {r.data.tags["drl_tune.trial_id"]: r for r in search}
    for run in confirmed:
        assert run.info.status == "FINISHED"
        source = search_ids[run.data.tags["drl_tune.source_trial"]]  # a copy of a search trial's config
        # the same configuration; seed and stage (a param too, for the runs table) differ
        assert {k: v for k, v in run.data.params.items() if k not in ("seed", "stage")} == \
               {k: v for k, v in source.data.params.items() if k not in ("seed", "stage")}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert sorted(steps) == list(range(EPOCHS))  # full epochs: no early stopping
    # the confirmed configuration of each method is its best search trial on validation accuracy
    for method in ("joint", "drl"):
        scores = {r.data.tags["drl_tune.trial_id"]: last(client, r.info.run_id, "val/acc_best")
                  for r in search if r.data.params["method"] == method}
        (chosen,) = {r.data.tags["drl_tune.source_trial"] for r in confirmed if r.data.params["method"] == method}
        assert scores[chosen] == max(scores.values()), (chosen, scores)  # tied trials: either one

    # the answer's numbers are the trials' numbers (read independently from MLflow)
    answer = json.loads((study / "answer.json").read_text())
    by_method = {m: sorted((r for r in confirmed if r.data.params["method"] == m),
                           key=lambda r: int(r.data.params["seed"])) for m in ("joint", "drl")}
    for entry in answer["configs"]:
        mine = by_method[entry["method"]]
        test = [last(client, r.info.run_id, "test/acc_at_best_val") for r in mine]
        gap = [at_best(client, r.info.run_id, "balance/gap") for r in mine]
        stats = entry["stats"]
        assert stats["test/acc_at_best_val"]["values"] == pytest.approx(test)
        assert stats["test/acc_at_best_val"]["mean"] == pytest.approx(sum(test) / SEEDS)
        assert stats["test/acc_at_best_val"]["ci_low"] == pytest.approx(t_interval(test).ci_low)
        assert stats["balance/gap"]["mean"] == pytest.approx(sum(gap) / SEEDS)
        assert {"val/acc_audio", "val/acc_visual"} <= set(stats)
    assert answer["reference"] == {"method": "joint", "rank": 1}
    paired = next(p for p in answer["paired"] if p["metric"] == "test/acc_at_best_val")
    expected = paired_difference(*[[last(client, r.info.run_id, "test/acc_at_best_val") for r in by_method[m]]
                                   for m in ("drl", "joint")])
    assert paired["method"] == "drl" and paired["mean"] == pytest.approx(expected.mean)
    assert paired["ci_high"] == pytest.approx(expected.ci_high)
    assert paired["sentence"].startswith("drl − joint: ") and f"at {SEEDS} seeds" in paired["sentence"]
    rows = list(csv.DictReader((study / "answer.csv").open()))
    assert {(r["method"], r["metric"]) for r in rows} >= {("drl", "test/acc_at_best_val"),
                                                          ("joint", "balance/gap")}

    # what a user sees: the search labelled for what it is, then the answer as the headline
    assert "one seed per trial — the best of many noisy trials is optimistic" in out
    assert out.index(f"answer of study '{name}'") > out.index(f"search of study '{name}'")
    assert paired["sentence"] in out
    parent = client.get_run(plan.parent_run_id)
    assert parent.info.status == "FINISHED"
    drl_config = next(c for c in answer["configs"] if c["method"] == "drl")
    assert parent.data.metrics["drl/test_acc_at_best_val_mean"] == pytest.approx(
        drl_config["stats"]["test/acc_at_best_val"]["mean"])
    assert "joint/balance_gap_ci95" in parent.data.metrics
    assert {"answer.json", "answer.csv", "answer.txt"} <= {a.path for a in client.list_artifacts(plan.parent_run_id)}

    # confirming again is refused (one line, exit 2, nothing changed); --answer prints the saved answer
    before = (study / "answer.json").read_text()
    capsys.readouterr()
    assert confirm.main(["--name", name, "--storage", str(storage)]) == 2
    assert "already has a confirmation" in capsys.readouterr().err
    assert confirm.main(["--name", name, "--storage", str(storage), "--answer"]) == 0
    assert paired["sentence"] in capsys.readouterr().out
    assert (study / "answer.json").read_text() == before


def test_confirm_cli_bad_input(tmp_path, capsys):
    storage = tmp_path / "studies"
    assert confirm.main(["--name", "nope", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study 'nope'" in err
    assert not storage.exists()  # nothing written
    for bad in (["--seeds", "-1"], ["--seeds", "2.5"], ["--top-k", "0"], ["--top-k", "x"]):
        with pytest.raises(SystemExit) as exc:
            confirm.main(["--name", "nope", "--storage", str(storage), *bad])
        assert exc.value.code == 2
        assert "must be" in capsys.readouterr().err
    not_a_study = storage / "junk"
    not_a_study.mkdir(parents=True)
    (not_a_study / PLAN_FILE).write_text("[1, 2]")
    assert confirm.main(["--name", "junk", "--storage", str(storage)]) == 2
    assert "not a drl_tune study plan" in capsys.readouterr().err
    assert sorted(p.name for p in not_a_study.iterdir()) == [PLAN_FILE]


@pytest.mark.parametrize("bad", ["--confirm-seeds=-1", "--confirm-seeds=1.5", "--confirm-top-k=0"])
def test_run_rejects_bad_confirm_flags(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--space", "demo", "--storage", str(tmp_path), bad, "--dry-run"])
    assert exc.value.code == 2 and "must be" in capsys.readouterr().err


@pytest.mark.parametrize("block, message", [
    ("{top_k: 0, seeds: 2}", "'study.confirm.top_k' must be an integer >= 1, got 0"),
    ("{top_k: 1, seeds: -2}", "'study.confirm.seeds' must be an integer >= 0, got -2"),
    ("{seeds: 2.5}", "must be an integer"),
    ("{seed: 2}", "unknown key 'study.confirm.seed'"),
    ("[1, 2]", "must be a mapping"),
])
def test_space_confirm_block_errors(block, message, tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text(SPACE.replace("confirm: {top_k: 1, seeds: 2}", f"confirm: {block}"))
    assert main(["--space", str(space), "--storage", str(tmp_path / "s"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(space) in err
    assert not (tmp_path / "s").exists()


def test_confirm_seeds_zero_plans_no_confirmation(tmp_path, capsys):
    space = tmp_path / "c.yaml"
    space.write_text(SPACE)
    tiny = tiny_sets()  # the dry run loads the dataset: a tiny one
    assert main(["--space", str(space), "--storage", str(tmp_path), "--confirm-seeds", "0", "--dry-run", *tiny]) == 0
    assert "confirmation: none" in capsys.readouterr().out
    assert main(["--space", str(space), "--storage", str(tmp_path), "--dry-run", *tiny]) == 0
    assert "re-trained with 2 fresh seeds" in capsys.readouterr().out


@pytest.mark.slow
def test_every_checkpoint_carries_the_history_that_refills_a_lost_row(confirmed_study, tmp_path):
    """On the real study's trial folders: the newest checkpoint holds exactly the rows Tune recorded (so a row
    Tune's result.json loses when a worker dies comes back from it), and the reader refills dropped rows."""
    import shutil

    from drl_tune.study.history import RESTORED_KEY, checkpoint_history, metric_items, read_result_json

    folders = sorted(p.parent for p in confirmed_study["dir"].rglob("result.json"))
    assert len(folders) >= 4, folders  # search and confirmation trials
    for folder in folders:
        rows = read_result_json(folder)
        assert rows and all(RESTORED_KEY not in r for r in rows), folder
        saved = checkpoint_history(folder)
        assert [metric_items(r) for r in saved] == [metric_items(r) for r in rows], folder

        broken = tmp_path / folder.name
        shutil.copytree(folder, broken)
        lines = (broken / "result.json").read_text().splitlines()
        kept = [line for i, line in enumerate(lines) if i not in (0, len(lines) - 1)] if len(lines) > 2 else lines[1:]
        (broken / "result.json").write_text("".join(line + "\n" for line in kept))
        refilled = read_result_json(broken)
        assert [metric_items(r) for r in refilled] == [metric_items(r) for r in rows], folder
        assert sum(RESTORED_KEY in r for r in refilled) == len(lines) - len(kept)
        shutil.rmtree(broken)
