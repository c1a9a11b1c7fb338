"""Table 1 (drl_tune.analysis.table) from hand-made finished study folders.

Each folder holds search trials (``<method>_<id>/params.json`` + ``result.json``, with ``time/epoch_s``), and
for two of the three datasets the confirmation trials' per-epoch histories under ``confirm/``; its ``answer.json``
is computed here from the same per-seed values with the project's own statistics (t interval, paired difference,
paired-t p, Holm: ``add_multiplicity_and_power``), as ``build_answer`` does from Tune's trials. Every expected
number is computed in the test from the generated curves, never read back from the table's own code.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from drl_tune.analysis.table import (
    CD_PNG,
    OUTPUTS,
    Table,
    TableError,
    build_table,
    nemenyi_cd,
    tex_escape,
    to_latex,
    write_table,
)
from drl_tune.ground.stats import paired_difference, paired_t_pvalue, t_interval
from drl_tune.study.answer import add_multiplicity_and_power

SEEDS = [1, 2, 3, 4, 5]
EPOCHS = 6
# dataset -> (method, rank) -> level of its validation curve; ranks on mean test acc are clear-cut by design
LEVELS = {
    "av_mnist": {("joint", 1): 0.60, ("drl", 1): 0.70, ("drl", 2): 0.66, ("ogm_ge", 1): 0.55},
    "cremad": {("joint", 1): 0.50, ("drl", 1): 0.58, ("ogm_ge", 1): 0.62},
    "ks": {("joint", 1): 0.40, ("drl", 1): 0.45, ("ogm_ge", 1): 0.30},
}
# per method: (search trials, epochs each, time/epoch_s)
SEARCH = {"joint": (2, 4, 1.0), "drl": (3, 3, 1.5), "ogm_ge": (2, 2, 2.0)}


def curves(dataset: str, method: str, rank: int, seed: int) -> dict[str, np.ndarray]:
    """One confirmation trial's epochs: val/acc, test/acc, macro-F1, gap (deterministic in its arguments)."""
    # the same seed is the same data order and initialisation for every method: most of the noise is shared
    shared = np.random.default_rng([sum(map(ord, dataset)), seed]).normal(0, 0.02, (2, EPOCHS))
    rng = np.random.default_rng([sum(map(ord, dataset)), sum(map(ord, method)), rank, seed])
    level = LEVELS[dataset][(method, rank)]
    val = level + 0.08 * np.linspace(0, 1, EPOCHS) + shared[0] + rng.normal(0, 0.005, EPOCHS)
    test = val - 0.01 + shared[1] + rng.normal(0, 0.005, EPOCHS)  # test peaks elsewhere than val: selecting on it gains
    f1 = test - 0.02 + rng.normal(0, 0.01, EPOCHS)
    gap = 0.4 - 0.03 * np.arange(EPOCHS) + rng.normal(0, 0.02, EPOCHS)
    return {"val": val, "test": test, "f1": f1, "gap": gap}


def history(c: dict[str, np.ndarray], epoch_s: float = 1.0) -> list[dict]:
    """The engine's per-epoch rows: running best val and the test acc at that epoch."""
    rows, best, best_epoch = [], -1.0, 0
    for e in range(len(c["val"])):
        if c["val"][e] > best:
            best, best_epoch = float(c["val"][e]), e
        rows.append({"epoch": float(e), "val/acc": float(c["val"][e]), "val/acc_best": best,
                     "test/acc": float(c["test"][e]), "test/acc_at_best_val": float(c["test"][best_epoch]),
                     "test/macro_f1": float(c["f1"][e]), "best_epoch": float(best_epoch),
                     "balance/gap": float(c["gap"][e]), "val/acc_audio": 0.6, "val/acc_visual": 0.6 - c["gap"][e],
                     "time/epoch_s": epoch_s})
    return rows


def summary(c: dict[str, np.ndarray]) -> dict[str, float]:
    b = int(np.argmax(c["val"]))
    return {"test/acc_at_best_val": float(c["test"][b]), "val/acc_best": float(c["val"][b]),
            "balance/gap": float(c["gap"][b])}


def write_trial(folder: Path, method: str, tid: str, rows: list[dict], **config) -> None:
    path = folder / f"{method}_{tid}"
    path.mkdir(parents=True)
    cfg = {"method": method, "epochs": len(rows), "seed": 0, "lr": 0.01, **config}
    (path / "params.json").write_text(json.dumps(cfg))
    (path / "result.json").write_text("".join(json.dumps({**r, "trial_id": tid}) + "\n" for r in rows))


def answer_for(dataset: str) -> dict:
    """answer.json in build_answer's schema, from the per-seed summaries, with the project's statistics."""
    metrics = ["test/acc_at_best_val", "val/acc_best", "balance/gap"]
    summ = {key: [summary(curves(dataset, *key, s)) for s in SEEDS] for key in LEVELS[dataset]}
    configs = [{"method": m, "rank": r, "source_trial": f"s{m}{r}", "config": {"lr": 0.01}, "seeds": SEEDS,
                "trials": [f"{m}{r}x{s}" for s in SEEDS], "failed_seeds": [],
                "stats": {k: t_interval([x[k] for x in summ[(m, r)]]).to_dict() for k in metrics}}
               for (m, r) in LEVELS[dataset]]
    paired = []
    for (m, r), values in summ.items():
        if m == "joint":
            continue
        for k in metrics:
            diff = paired_difference([x[k] for x in values], [x[k] for x in summ[("joint", 1)]])
            paired.append({"method": m, "rank": r, "metric": k,
                           **{a: b for a, b in diff.to_dict().items() if a != "level"},
                           "p": paired_t_pvalue(diff), "_diff": diff})
    add_multiplicity_and_power(paired, "joint", 2)
    return json.loads(json.dumps({"study": dataset, "select_metric": "val/acc_best", "seeds": SEEDS,
                                  "top_k": 2, "metrics": metrics, "configs": configs,
                                  "reference": {"method": "joint", "rank": 1}, "paired": paired,
                                  "headline": [p["sentence"] for p in paired if p["metric"] == metrics[0]]},
                                 allow_nan=True).replace("NaN", "null"))


def make_dataset(root: Path, dataset: str, *, confirm_histories: bool = True, answer: bool = True,
                 data_name: str = "synthetic") -> Path:
    folder = root / dataset
    folder.mkdir(parents=True)
    plan = {"name": dataset, "space_name": dataset, "storage": str(root), "search": [], "metric": "val/acc_best",
            "mode": "max", "num_samples": 7, "seed": 0, "overrides": {}, "constants": {"data.name": data_name}}
    (folder / "drl_tune_study.json").write_text(json.dumps(plan))
    for method, (n, epochs, epoch_s) in SEARCH.items():
        for i in range(n):
            c = curves(dataset, method, 1, 100 + i)
            write_trial(folder, method, f"{method[0]}{i}", history({k: v[:epochs] for k, v in c.items()}, epoch_s))
    if confirm_histories:
        for (m, r) in LEVELS[dataset]:
            for s in SEEDS:
                write_trial(folder / "confirm", m, f"{m}{r}x{s}", history(curves(dataset, m, r, s), 9.0), seed=s)
    if answer:
        (folder / "answer.json").write_text(json.dumps(answer_for(dataset), indent=2))
    return folder


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("studies")
    return {d: make_dataset(root, d, confirm_histories=d != "ks", data_name={"cremad": "cremad"}.get(d, "synthetic"))
            for d in LEVELS}


@pytest.fixture(scope="module")
def table(three) -> Table:
    return build_table(three, methods=["joint", "drl", "ogm_ge"], n_boot=400)


def test_the_numbers_are_the_answers(table, three):
    assert table.datasets == ["av_mnist", "cremad", "ks"] and table.methods == ["joint", "drl", "ogm_ge"]
    for dataset, folder in three.items():
        answer = json.loads((folder / "answer.json").read_text())
        for method in table.methods:
            row = table.row(dataset, method)
            # drl has two confirmed configurations on av_mnist: the table shows the one with the best mean val acc
            cfgs = [c for c in answer["configs"] if c["method"] == method]
            shown = max(cfgs, key=lambda c: c["stats"]["val/acc_best"]["mean"])
            assert row["config_rank"] == shown["rank"] == 1
            for prefix, metric in (("test_acc", "test/acc_at_best_val"), ("gap", "balance/gap")):
                for key in ("mean", "ci_low", "ci_high", "std", "n"):
                    assert row[f"{prefix}_{key}"] == shown["stats"][metric][key]
            if method == "joint":
                assert row["reference"] and row["diff_mean"] is None
                continue
            p = next(p for p in answer["paired"] if p["method"] == method and p["rank"] == 1
                     and p["metric"] == "test/acc_at_best_val")
            assert (row["diff_mean"], row["diff_ci_low"], row["diff_ci_high"]) == (p["mean"], p["ci_low"],
                                                                                   p["ci_high"])
            assert (row["diff_p_holm"], row["diff_comparisons"], row["diff_significant"]) == (
                p["p_holm"], p["comparisons"], p["significant"])
    assert table.row("av_mnist", "drl")["diff_comparisons"] == 3  # drl#1, drl#2, ogm_ge#1 against joint
    assert table.row("cremad", "drl")["diff_comparisons"] == 2


def test_macro_f1_and_the_test_selected_figure_from_the_histories(table):
    for dataset in ("av_mnist", "cremad"):
        for method in table.methods:
            cs = [curves(dataset, method, 1, s) for s in SEEDS]
            best = [int(np.argmax(c["val"])) for c in cs]
            picked = [float(c["test"].max()) for c in cs]  # the best test accuracy over epochs
            honest = [float(c["test"][b]) for c, b in zip(cs, best, strict=True)]
            f1 = [float(c["f1"][b]) for c, b in zip(cs, best, strict=True)]
            row = table.row(dataset, method)
            assert row["test_selected_mean"] == pytest.approx(np.mean(picked), abs=1e-12)
            half = st.t.ppf(0.975, 4) * np.std(picked, ddof=1) / math.sqrt(5)
            assert row["test_selected_ci_high"] == pytest.approx(np.mean(picked) + half, abs=1e-12)
            assert row["test_selected_gain_mean"] == pytest.approx(np.mean(picked) - np.mean(honest), abs=1e-12)
            assert row["test_selected_gain_mean"] >= 0
            assert row["macro_f1_mean"] == pytest.approx(np.mean(f1), abs=1e-12)
    # every confirmed configuration has its figure, not only the ones the table shows
    drl2 = next(c for c in table.configs if c["dataset"] == "av_mnist" and c["method"] == "drl" and c["rank"] == 2)
    assert not drl2["shown"] and drl2["test_selected"]["mean"] == pytest.approx(
        np.mean([curves("av_mnist", "drl", 2, s)["test"].max() for s in SEEDS]), abs=1e-12)
    # ks has no confirmation histories: no test-selected figure, no macro-F1, and the notes say so
    assert table.row("ks", "drl")["test_selected_mean"] is None and table.row("ks", "drl")["macro_f1_mean"] is None
    assert any(n.startswith("ks: no per-epoch history") for n in table.notes)


def test_tuning_each_method_got(table):
    for dataset in LEVELS:
        for method, (n, epochs, epoch_s) in SEARCH.items():
            row = table.row(dataset, method)
            assert (row["search_trials"], row["search_epochs"]) == (n, n * epochs)
            assert row["search_hours"] == pytest.approx(n * epochs * epoch_s / 3600)
            assert row["epoch_cost_vs_joint"] == pytest.approx(epoch_s / SEARCH["joint"][2])


def test_ranks_per_dataset_and_their_mean(table):
    expected_per_dataset = {}
    for dataset in LEVELS:
        means = {m: np.mean([summary(curves(dataset, m, 1, s))["test/acc_at_best_val"] for s in SEEDS])
                 for m in table.methods}
        order = sorted(means, key=means.get, reverse=True)
        expected_per_dataset[dataset] = {m: order.index(m) + 1 for m in means}
    for m in table.methods:
        r = table.ranks[m]
        assert r["per_dataset"] == {d: float(expected_per_dataset[d][m]) for d in LEVELS}
        assert r["mean_rank"] == pytest.approx(np.mean([expected_per_dataset[d][m] for d in LEVELS]))
        assert 1 <= r["low"] <= r["high"] <= 3 and r["datasets"] == 3
    assert table.notes[0] == "The ranks rest on 3 datasets (av_mnist, cremad, ks)."


def test_critical_difference_is_friedman_and_nemenyi(table):
    cd = table.cd
    matrix = np.array([[table.row(d, m)["test_acc_mean"] for m in table.methods] for d in LEVELS])
    chi2, p = st.friedmanchisquare(*matrix.T)
    assert cd["friedman"]["statistic"] == pytest.approx(chi2) and cd["friedman"]["p"] == pytest.approx(p)
    assert cd["cd"] == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 3)), abs=2e-3)
    for k, q in ((2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (10, 3.164)):  # Demšar 2006, table 5(a)
        assert nemenyi_cd(k, 6) == pytest.approx(q * math.sqrt(k * (k + 1) / 36), abs=1e-3)
    assert cd["mean_ranks"] == {m: table.ranks[m]["mean_rank"] for m in table.methods}
    assert cd["nemenyi_p"]["drl"]["joint"] == cd["nemenyi_p"]["joint"]["drl"] <= 1


def test_holm_marks_follow_the_answer(three, tmp_path):
    t = build_table(three, n_boot=50)
    md = (Path(write_table(t, tmp_path / "a", tradeoff=False)[-4]).parent / "table.md").read_text()
    for dataset in LEVELS:
        for method in ("drl", "ogm_ge"):
            row = t.row(dataset, method)
            mark = ("↑" if row["diff_mean"] > 0 else "↓") if row["diff_significant"] else ""
            cell = f"{row['test_acc_mean']:.3f}{mark} [{row['test_acc_ci_low']:.3f}, {row['test_acc_ci_high']:.3f}]"
            assert f"| {cell} |" in md
    assert t.row("av_mnist", "drl")["diff_significant"]  # 10 points above joint at 5 seeds
    # the table reuses the answer's verdict: flip it in a copy of answer.json and the mark follows
    copy = tmp_path / "flipped"
    shutil.copytree(three["av_mnist"], copy)
    answer = json.loads((copy / "answer.json").read_text())
    for p in answer["paired"]:
        if p["method"] == "drl" and p["rank"] == 1:
            p["significant"] = False
    (copy / "answer.json").write_text(json.dumps(answer))
    flipped = build_table({"av_mnist": copy}, n_boot=50)
    row = flipped.row("av_mnist", "drl")
    assert row["diff_significant"] is False and row["diff_significant_unadjusted"] is True
    md = (tmp_path / "b" / "table.md")
    write_table(flipped, tmp_path / "b", tradeoff=False)
    assert f"| {row['test_acc_mean']:.3f} [{row['test_acc_ci_low']:.3f}, " in md.read_text()


def test_outputs_round_trip(table, tmp_path):
    paths = write_table(table, tmp_path)
    assert {p.name for p in paths} == {*OUTPUTS, CD_PNG}
    data = json.loads((tmp_path / "table.json").read_text())
    assert data == table.to_dict()
    assert Table.from_dict(data).to_dict() == data
    frame = pd.read_csv(tmp_path / "table.csv", float_precision="round_trip")  # pandas' fast parser rounds
    assert len(frame) == len(table.rows) == 9
    for (_, got), want in zip(frame.iterrows(), table.rows, strict=True):
        for key, value in want.items():
            if isinstance(value, bool):
                assert str(got[key]) == str(value), key
            elif isinstance(value, int | float):
                assert got[key] == value, key  # full precision (an int column with gaps reads as float)
            elif value is None:
                assert pd.isna(got[key]), key
            else:
                assert str(got[key]) == str(value), key
    png = (tmp_path / CD_PNG).read_bytes()
    assert png.startswith(b"\x89PNG")
    page = (tmp_path / "table.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 3  # the CD picture and each dataset's trade-off
    assert "Friedman χ²" in page and "av_mnist" in page
    md = (tmp_path / "table.md").read_text()
    assert "| method | av_mnist test acc |" in md and f"![critical difference]({CD_PNG})" in md
    assert f"{table.ranks['drl']['mean_rank']:.2f} [" in md


def test_latex_has_booktabs_rules_and_escaped_names(table):
    tex = to_latex(table)
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 2
    assert r"av\_mnist" in tex and r"ogm\_ge" in tex
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert not re.search(r"(?<!\\)_", body), "an unescaped underscore"
    assert tex.count("{") == tex.count("}")
    assert body.isascii(), "pdflatex without inputenc extras reads ASCII: every symbol is a LaTeX command"
    assert r"$^{\uparrow}$ {\scriptsize [" in tex  # the mark beside the mean, the interval in small type
    assert tex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


def test_latex_compiles(table, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed on this machine: the LaTeX is checked by text only")
    doc = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + to_latex(table) + "\\end{document}\n"
    (tmp_path / "t.tex").write_text(doc)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_one_dataset_says_why_there_is_no_picture(three, tmp_path):
    (tmp_path / CD_PNG).write_bytes(b"stale")
    t = build_table({"cremad": three["cremad"]}, n_boot=50)
    assert "reason" in t.cd and "at least 2 datasets" in t.cd["reason"]
    names = {p.name for p in write_table(t, tmp_path, tradeoff=False)}
    assert names == set(OUTPUTS) and not (tmp_path / CD_PNG).exists()
    md = (tmp_path / "table.md").read_text()
    assert "The ranks rest on 1 dataset (cremad)." in md and "need at least 2 datasets" in md
    assert "data:image/png" not in (tmp_path / "table.html").read_text()


def test_a_study_without_an_answer_is_refused(tmp_path):
    folder = make_dataset(tmp_path, "cremad", answer=False)
    with pytest.raises(TableError, match="has no answer.json: confirm it first"):
        build_table({"cremad": folder})


def test_the_hand_made_answer_of_the_analysis_tests(tmp_path):
    """tests/analysis_fixtures' answer (no per-config seeds, no confirmation histories, search without
    time/epoch_s) still makes a table: the answer's numbers, no test-selected figure, no hours."""
    from tests.analysis.test_analysis import make_study
    from tests.analysis_fixtures import VALUES, write_answer

    folders = {}
    for name in ("one", "two"):
        folders[name] = make_study(tmp_path, name)
        write_answer(folders[name])
    t = build_table(folders, n_boot=50)
    for name in folders:
        for method in ("joint", "drl"):
            row = t.row(name, method)
            assert row["test_acc_mean"] == pytest.approx(np.mean(VALUES[(method, 1)]["test/acc_at_best_val"]))
            assert row["seeds"] == 3 and row["test_selected_mean"] is None and row["search_hours"] is None
    assert t.ranks["drl"]["mean_rank"] == 1.0 and t.ranks["joint"]["mean_rank"] == 2.0
    assert "reason" not in t.cd and t.cd["friedman"]["p"] is None  # two methods: Nemenyi's pair only
    assert write_table(t, tmp_path / "out", tradeoff=False)[0].name == CD_PNG


def test_the_html_page_in_a_browser(table, tmp_path):
    """The page a reader opens: headless Chromium renders the table and the critical-difference picture."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    write_table(table, tmp_path, tradeoff=False)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto((tmp_path / "table.html").as_uri())
            cells = page.locator("table").first.locator("tr")
            assert cells.count() == 1 + len(table.methods)  # a header row and one row per method
            text = page.locator("body").inner_text()
            assert all(m in text for m in table.methods) and "test-selected" in text.lower()
            image = page.locator("img").first
            assert image.evaluate("img => img.complete && img.naturalWidth > 200")
            page.screenshot(path=str(tmp_path / "table.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "table.png").stat().st_size > 10_000


def test_balancebenchmark_figures_beside_ours_on_its_datasets(table, tmp_path):
    """CREMA-D's column group carries BalanceBenchmark's published accuracy (the figures the issue quotes from its
    README's results picture: joint 65.50, DRL = "Relearning" 71.02; OGM 67.76), marked and cited; the synthetic
    datasets carry none; the LaTeX grows one column for that group only."""
    expected = {"joint": 0.6550, "drl": 0.7102, "ogm_ge": 0.6776}
    for method, acc in expected.items():
        row = table.row("cremad", method)
        assert row["published_acc"] == pytest.approx(acc) and row["published_source"] == "BalanceBenchmark"
        assert table.row("av_mnist", method)["published_acc"] is None
    md = (tmp_path / "t.md")
    write_table(table, tmp_path, tradeoff=False)
    md = (tmp_path / "table.md").read_text()
    assert "cremad BalanceBenchmark†" in md and "0.7102" in md and "av_mnist BalanceBenchmark" not in md
    assert "arXiv:2502.10816" in md and "selected on the test set" in md
    tex = to_latex(table)
    assert r"\multicolumn{4}{c}{cremad}" in tex and r"\multicolumn{3}{c}{av\_mnist}" in tex
    assert "0.7102" in tex and "BB$^\\dagger$" in tex
    csv_rows = pd.read_csv(tmp_path / "table.csv")
    assert csv_rows.loc[(csv_rows.dataset == "cremad") & (csv_rows.method == "drl"), "published_acc"].item() == 0.7102
