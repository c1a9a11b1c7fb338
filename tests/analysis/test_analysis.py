"""drl_tune.analysis on hand-written study folders (fast): what the plots draw, and bad input.

The folders follow what Tune writes (``<method>_<id>/params.json`` + ``result.json``, one JSON line per epoch)
with values chosen here, so every expected number is known in advance. The end-to-end version on a real study
(Ray, MLflow, notebooks, browser) is ``tests/analysis/test_analysis_study.py``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex

from drl_tune.analysis import plots
from drl_tune.analysis.load import StudyError, load_tune
from drl_tune.report import main as report_main
from tests.analysis_fixtures import write_answer

SEARCH = [{"key": "method", "kind": "choice", "values": ["joint", "drl"], "method": None, "low": None, "high": None,
           "step": None},
          {"key": "lr", "kind": "loguniform", "low": 0.001, "high": 0.1, "step": None, "values": [], "method": None},
          {"key": "drl.lam", "kind": "uniform", "low": 0.5, "high": 6.0, "step": None, "values": [],
           "method": "drl"}]


def trial(folder: Path, method: str, tid: str, rows: list[dict], *, error: bool = False, **config) -> None:
    path = folder / f"{method}_{tid}"
    path.mkdir(parents=True)
    cfg = {"method": method, "epochs": len(rows) if not error else 3, "seed": 0, "lr": 0.01, **config}
    (path / "params.json").write_text(json.dumps(cfg))
    (path / "result.json").write_text("".join(json.dumps({**r, "trial_id": tid, "config": cfg}) + "\n" for r in rows))
    if error:
        (path / "error.txt").write_text("FloatingPointError: non-finite outputs")


def epoch_rows(accs: list[float], reinit_at: tuple[int, ...] = (), alpha: float = 0.3, spread: bool = False):
    rows, best, best_epoch, reinits = [], -1.0, 0, 0
    for e, acc in enumerate(accs):
        if acc > best:
            best, best_epoch = acc, e
        row = {"epoch": float(e), "val/acc": acc, "val/acc_best": best, "test/acc": acc - 0.02,
               "test/acc_at_best_val": best - 0.02, "best_epoch": float(best_epoch), "val/acc_audio": 0.6,
               "val/acc_visual": 0.2 + 0.05 * e, "balance/gap": 0.4 - 0.05 * e, "train/loss": 1.0 / (e + 1)}
        if e in reinit_at:
            reinits += 1
            row |= {"diag/purity_train_audio": 0.9, "diag/purity_val_audio": 0.6, "diag/alpha_audio": alpha,
                    "diag/purity_train_visual": 0.4, "diag/purity_val_visual": 0.35, "diag/alpha_visual": 0.05,
                    "diag/reinits": float(reinits)}
            if spread:
                row |= {"diag/alpha_std_audio": 0.04, "diag/alpha_std_visual": 0.01}
        rows.append(row)
    return rows


def make_study(root: Path, name: str = "hand", *, trials: bool = True, all_error: bool = False,
               spread: bool = False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    plan = {"name": name, "space_name": "hand", "space_path": "search_spaces/demo.yaml", "storage": str(root),
            "search": SEARCH, "metric": "val/acc_best", "mode": "max", "num_samples": 5, "seed": 0, "overrides": {},
            "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}"}
    (folder / "drl_tune_study.json").write_text(json.dumps(plan))
    if not trials:
        return folder
    if all_error:
        trial(folder, "drl", "e1", [], error=True)
        trial(folder, "joint", "e2", epoch_rows([0.3])[:1], error=True)
        return folder
    trial(folder, "drl", "d1", epoch_rows([0.3, 0.4, 0.5, 0.45, 0.55], (1, 3), spread=spread), **{"drl.lam": 3.0})
    trial(folder, "drl", "d2", epoch_rows([0.2, 0.25, 0.3, 0.35, 0.6], (2,)), **{"drl.lam": 1.0}, lr=0.05)
    trial(folder, "drl", "d3", epoch_rows([0.1, 0.12]), **{"drl.lam": 5.0}, epochs=5, lr=0.002)  # stopped early
    trial(folder, "joint", "j1", epoch_rows([0.3, 0.35, 0.4, 0.42, 0.44]))
    trial(folder, "joint", "j2", epoch_rows([0.25, 0.3, 0.33, 0.36, 0.5]), lr=0.08)
    trial(folder, "joint", "j3", [], error=True)
    return folder


def test_frames_summaries_and_status(tmp_path):
    study = load_tune(make_study(tmp_path))
    t = study.trials.set_index("trial_id")
    assert len(t) == 6 and set(study.epochs["trial_id"]) == {"d1", "d2", "d3", "j1", "j2"}
    assert list(t.loc[["d3", "j3", "d1"], "status"]) == ["stopped", "error", "completed"]
    # d1: best val 0.55 at epoch 4; test at best-val = 0.53; gap and probes taken at that epoch
    assert t.loc["d1", "val/acc_best"] == pytest.approx(0.55) and t.loc["d1", "best_epoch"] == 4
    assert t.loc["d1", "balance/gap"] == pytest.approx(0.4 - 0.05 * 4)
    assert t.loc["d1", "val/acc_visual"] == pytest.approx(0.2 + 0.05 * 4)
    assert study.weak_modality() == "visual" and study.modalities == ["audio", "visual"]
    assert study.searched_keys("joint") == ["lr"] and study.searched_keys("drl") == ["lr", "drl.lam"]


def test_tradeoff_one_point_per_finished_trial_one_colour_per_method(tmp_path):
    study = load_tune(make_study(tmp_path))
    fig = plots.tradeoff(study)
    ax = fig.axes[0]
    series = {c.get_gid(): c for c in ax.collections if c.get_gid()}
    assert len(series["trials-drl"].get_offsets()) == 3 and len(series["trials-joint"].get_offsets()) == 2
    colours = {m: to_hex(series[f"trials-{m}"].get_facecolors()[0], keep_alpha=False) for m in ("drl", "joint")}
    assert colours["drl"] != colours["joint"]
    assert len(series["stopped-drl"].get_offsets()) == 1  # d3, stopped early by the scheduler
    # gap (lower better) vs test accuracy: the front is computed independently here
    pts = np.array([[0.2, 0.53], [0.2, 0.58], [0.35, 0.10], [0.2, 0.40], [0.2, 0.48]])
    front = [i for i, (g, a) in enumerate(pts) if not any((g2 <= g and a2 >= a) and (g2 < g or a2 > a)
                                                         for g2, a2 in pts)]
    line = next(ln for ln in ax.lines if ln.get_gid() == "pareto")
    assert sorted(map(tuple, np.round(line.get_xydata(), 6))) == sorted(map(tuple, np.round(pts[front], 6)))
    assert "balance gap" in ax.get_xlabel() and fig.axes[1].get_xlabel().startswith("weak modality (visual)")


def test_confirmed_configurations_drawn_with_their_intervals(tmp_path):
    folder = make_study(tmp_path)
    answer = json.loads(write_answer(folder).read_text())
    study = load_tune(folder)
    ax = plots.tradeoff(study).axes[0]
    for cfg in answer["configs"]:
        line = next(ln for ln in ax.lines if ln.get_gid() == f"confirmed-{cfg['method']}-1")
        x, y = line.get_xydata()[0]
        assert x == pytest.approx(cfg["stats"]["balance/gap"]["mean"])
        assert y == pytest.approx(cfg["stats"]["test/acc_at_best_val"]["mean"])
    comp = plots.comparison(study)
    drl_ci = next(ln for ln in comp.axes[0].lines if ln.get_gid() == "ci-drl-1")
    assert drl_ci.get_xydata()[0][0] == pytest.approx(np.mean([0.62, 0.58, 0.66]))
    paired = next(ln for ln in comp.axes[1].lines if ln.get_gid() == "paired-drl-1")
    assert paired.get_xydata()[0][0] == pytest.approx(np.mean([0.07, 0.04, 0.06]))


def test_dynamics_marks_exactly_the_reinit_epochs_and_alpha(tmp_path):
    study = load_tune(make_study(tmp_path, spread=True))
    drl, joint = plots.pick_dynamics_trials(study)
    assert drl["trial_id"] == "d2" and joint["trial_id"] == "j2"  # the best by validation (same seed for joint)
    fig = plots.dynamics(study, "d1")
    drl_axes = [ax for ax in fig.axes if ax.get_title().startswith("drl trial d1")]
    assert len(drl_axes) == 2  # one per modality
    for ax in drl_axes:
        marks = sorted(int(ln.get_xdata()[0]) for ln in ax.lines if (ln.get_gid() or "").startswith("reinit-"))
        assert marks == [1, 3]
        modality = ax.get_title().rsplit("— ", 1)[1]
        alpha = next(ln for ln in ax.lines if ln.get_gid() == f"alpha-{modality}")
        assert list(alpha.get_xdata()) == [1, 3]
        assert list(alpha.get_ydata()) == pytest.approx([0.3, 0.3] if modality == "audio" else [0.05, 0.05])
        # the α spread (diag/alpha_std_<m>) is drawn as an error bar around α
        bars = [c for c in ax.collections if c.get_segments() and len(c.get_segments()) == 2]
        assert bars
    joint_axes = [ax for ax in fig.axes if ax.get_title().startswith("joint trial j2")]
    assert joint_axes and not any((ln.get_gid() or "").startswith("reinit-") for ax in joint_axes for ln in ax.lines)


def test_importance_and_knobs(tmp_path):
    study = load_tune(make_study(tmp_path))
    imp = plots.importances(study)
    assert set(imp) == {"drl"}  # joint has 2 finished trials: too few for an estimate
    assert set(imp["drl"]["fANOVA"]) == {"lr", "drl.lam"}
    assert sum(imp["drl"]["fANOVA"].values()) == pytest.approx(1.0)
    fig = plots.knobs(study)
    val = next(c for c in fig.axes[0].collections if c.get_gid() == "knob-drl.lam-val")
    assert sorted(val.get_offsets()[:, 0]) == pytest.approx([1.0, 3.0, 5.0])


def test_report_cli_writes_self_contained_html(tmp_path, capsys):
    folder = make_study(tmp_path)
    write_answer(folder)
    assert report_main(["--path", str(folder)]) == 0
    out = capsys.readouterr().out.strip()
    html = Path(out.split("report: ")[1]).read_text()
    assert html.count("data:image/png;base64,") == 6  # trade-off, dynamics, importance, knobs, budget, comparison
    assert "Budget curves (Dodge et al. 2019)" in html
    for tid in ("d1", "d2", "d3", "j1", "j2", "j3"):
        assert f"<td>{tid}</td>" in html
    assert "python -m drl_tune.run --space search_spaces/demo.yaml" in html and "0.620 [" in html
    assert "src=\"http" not in html and "src='http" not in html  # nothing fetched from elsewhere


def test_budget_curves_from_the_sampled_trials_official_settings_apart(tmp_path):
    """Each method's official setting (the plan's enqueued point) is drawn apart, not counted as a draw; an
    ASHA-stopped trial counts with what it reached, an errored one not at all. Expected numbers by hand."""
    from drl_tune.analysis.budget import budget, budget_curves

    folder = make_study(tmp_path)
    plan = json.loads((folder / "drl_tune_study.json").read_text())
    plan["points_to_evaluate"] = [{"method": "drl", "lr": 0.01, "drl.lam": 3.0}, {"method": "joint", "lr": 0.01}]
    (folder / "drl_tune_study.json").write_text(json.dumps(plan))
    study = load_tune(folder)
    curves = budget_curves(study)
    drl, joint = curves[curves["method"] == "drl"], curves[curves["method"] == "joint"]
    # drl: d1 (alpha 3, lr 0.01) is the official setting, 0.55; the draws are d2 (0.6) and d3 (0.12, stopped)
    assert drl["n"].tolist() == [1, 2] and drl["official"].iloc[0] == pytest.approx(0.55)
    assert drl["draws"].iloc[0] == 2 and drl["stopped"].iloc[0] == 1 and drl["errored"].iloc[0] == 0
    # n=1: the mean 0.36; n=2: max is 0.12 only when both draws are d3 (1/4) -> 0.12/4 + 0.6*3/4 = 0.48
    assert drl["expected"].tolist() == pytest.approx([0.36, 0.48])
    assert drl["std"].iloc[1] == pytest.approx(math.sqrt(0.25 * 0.12**2 + 0.75 * 0.6**2 - 0.48**2))
    assert drl["low"].iloc[0] == pytest.approx(0.12) and drl["high"].iloc[0] == pytest.approx(0.6)  # clipped
    # joint: j1 official (0.44), j2 the one draw (0.5), j3 errored and left out
    assert joint["expected"].tolist() == pytest.approx([0.5]) and joint["errored"].iloc[0] == 1
    fig = budget(study)
    line = next(ln for ln in fig.axes[0].lines if ln.get_gid() == "budget-drl")
    assert line.get_ydata().tolist() == pytest.approx([0.36, 0.48])
    official = next(ln for ln in fig.axes[0].lines if ln.get_gid() == "budget-official-drl")
    assert official.get_ydata()[0] == pytest.approx(0.55)
    note = next(t for t in fig.texts if t.get_gid() == "budget-note").get_text()
    assert "TPE is adaptive" in note and "--searcher random" in note and "drl 1/2" in note and "1 errored" in note
    plan["searcher"] = "random"
    (folder / "drl_tune_study.json").write_text(json.dumps(plan))
    note = next(t for t in budget(load_tune(folder)).texts if t.get_gid() == "budget-note").get_text()
    assert note.startswith("Random search: the trials are i.i.d. draws")


@pytest.mark.parametrize("case", ["missing", "empty", "all_errored", "no_answer_server"])
def test_bad_input_one_line_nonzero_exit(tmp_path, capsys, case):
    if case == "missing":
        argv = ["--path", str(tmp_path / "nope")]
        expect = "does not exist"
    elif case == "empty":
        argv = ["--path", str(make_study(tmp_path, trials=False))]
        expect = "has no trials yet"
    elif case == "all_errored":
        argv = ["--path", str(make_study(tmp_path, all_error=True))]
        expect = "every trial of study 'hand'"
    else:
        argv = ["--name", "hand", "--mlflow-uri", "http://127.0.0.1:9"]  # nothing listens on the discard port
        expect = "does not answer"
    start = time.monotonic()
    assert report_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err
    assert time.monotonic() - start < 20
    with pytest.raises(StudyError):
        if case == "no_answer_server":
            from drl_tune.analysis.load import load_mlflow

            load_mlflow("http://127.0.0.1:9", "hand")
        else:
            load_tune(Path(argv[1]))


def test_report_shows_configurations_to_four_significant_digits(tmp_path):
    """The report's answer and search tables read like the printed ones: drl.lam=4.434, lr 0.002774 (not 0.003),
    an accuracy 0.55; answer.json, which the report reads, is left as it was."""
    from drl_tune.analysis.html_report import _table, answer_section, search_rows

    folder = tmp_path / "long"
    make_study(tmp_path, "long", trials=False)
    trial(folder, "drl", "d1", epoch_rows([0.3, 0.55]), **{"drl.lam": 4.433541515048307}, lr=0.0027741234)
    trial(folder, "joint", "j1", epoch_rows([0.3, 0.4]))
    answer = json.loads(write_answer(folder).read_text())
    answer["configs"][0]["config"] = {"drl.lam": 4.433541515048307, "lr": 0.0027741234}
    (folder / "answer.json").write_text(json.dumps(answer))
    study = load_tune(folder)
    section = answer_section(study)
    assert "drl.lam=4.434, lr=0.002774" in section and "4.43354" not in section
    search = _table(*search_rows(study))
    assert "<td>4.434</td>" in search and "<td>0.002774</td>" in search and "<td>0.55</td>" in search
    assert "4.43354" not in search and "0.0027741234" not in search
    assert json.loads((folder / "answer.json").read_text())["configs"][0]["config"]["drl.lam"] == 4.433541515048307
    assert plots._drl_setting(study.trials.set_index("trial_id").loc["d1"]) == "λ=4.434"  # the dynamics' title


def test_every_registered_method_has_a_colour_of_its_own():
    """A figure with every method tells them apart: one fixed colour per registered method, no two alike (user
    methods take EXTRA_COLORS)."""
    from drl_tune.analysis.colors import METHOD_COLORS
    from drl_tune.methods import REGISTRY

    assert set(REGISTRY) <= set(METHOD_COLORS)
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
