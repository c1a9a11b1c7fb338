"""One self-contained HTML file per study: the answer, the pictures (embedded), the search, how to reproduce it.

:func:`write_report` is what ``python -m drl_tune.report`` and the end of ``python -m drl_tune.run`` call.
The file needs nothing beside it (PNG figures are embedded as base64); the PNG/SVG files are also written
next to it (``figures/``) for slides and papers.
"""

from __future__ import annotations

import base64
import html
import math
import shlex
import time
from pathlib import Path
from typing import Any

import pandas as pd

from drl_tune.analysis.load import SELECT_METRIC, TEST_METRIC, Study, load_tune
from drl_tune.ground.io import atomic_write_text
from drl_tune.ground.readable import settings, sig4

CAPTIONS = {
    "tradeoff": "Multimodal accuracy (test, at each trial's best-validation epoch) against balance: the gap between "
                "the modalities' probe accuracies (left, lower is more balanced) and the weak modality's probe "
                "accuracy (right). One colour per method; dashed: Pareto front of the search trials; diamonds: "
                "confirmed configurations with 95% intervals over fresh seeds.",
    "dynamics": "One DRL trial per modality over epochs: uni-modal probe accuracy, k-means purity on train and "
                "validation features (DRL's diagnosis), re-initialisation epochs (dashed) and the applied strength α; "
                "joint training with the same seed beside it.",
    "importance": "Which searched hyperparameters explain the study objective, per method with that method's own "
                  "keys (Optuna's fANOVA and mean-decrease-impurity evaluators on a study rebuilt from the trials). "
                  "Few trials make these estimates rough.",
    "knobs": "DRL's accuracy against its knobs (re-init strength α, diagnosis interval, number of clusters), one "
             "marker per DRL search trial; dashed: the best joint trial.",
    "budget": "Budget curves (Dodge et al. 2019): the expected best validation accuracy after n search trials of "
              "each method, drawn from its sampled trials, with a ± 1 s.d. band; dashed: the method's official "
              "setting. Exact for random search; an approximation under TPE (the figure says which). Where the "
              "curves cross, which method wins depends on the tuning budget.",
    "pareto": "A multi-objective study: every search trial on the two objectives it optimised (each at the trial's "
              "best-validation epoch), the searched Pareto front (dashed, single seeds) and the confirmed front points "
              "with their 95% intervals over fresh seeds on both objectives (filled: still non-dominated once the "
              "intervals are taken into account).",
    "comparison": "The confirmation's answer: each configuration's mean and 95% t-interval over fresh seeds, and the "
                  "paired difference against the best joint configuration (same seeds).",
}


def _fmt(value: Any) -> str:
    """A cell as people read it: a float to 4 significant digits (a searched lr of 0.002774 stays 0.002774)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return html.escape(sig4(value))


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def answer_section(study: Study) -> str:
    answer = study.answer
    if not answer:
        return ("<p class='note'>No confirmation yet (no <code>answer.json</code>): the search's best scores below "
                "are the maximum over noisy trials and therefore optimistic.</p>")
    metrics = answer.get("metrics", [])
    rows = []
    for cfg in answer.get("configs", []):
        cells = [cfg["method"], cfg.get("rank"), cfg.get("source_trial")]
        for m in metrics:
            s = cfg.get("stats", {}).get(m)
            cells.append(f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if s else None)
        cells.append(settings(cfg.get("config", {})))
        rows.append(cells)
    out = [f"<p>Seeds {html.escape(str(answer.get('seeds')))}, top {answer.get('top_k')} configuration(s) per method "
           f"selected on <code>{html.escape(answer.get('select_metric', SELECT_METRIC))}</code>; "
           "mean [95% t-interval].</p>",
           _table(["method", "rank", "search trial", *metrics, "configuration"], rows, "answer")]
    if answer.get("paired"):
        ref = answer.get("reference", {})
        prow = [[p["method"], p.get("rank"), p["metric"], f"{p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]",
                 p.get("n"), "yes" if p.get("significant") else "no"] for p in answer["paired"]]
        out.append(f"<h3>Paired difference against {html.escape(str(ref.get('method')))} #{ref.get('rank')}</h3>")
        out.append(_table(["method", "rank", "metric", "mean difference [95% CI]", "seeds", "significant at 5%"],
                          prow, "answer"))
    if answer.get("headline"):
        out.insert(0, "<ul class='headline'>" + "".join(f"<li>{html.escape(h)}</li>" for h in answer["headline"])
                   + "</ul>")
    return "\n".join(out)


def search_rows(study: Study) -> tuple[list[str], list[list[Any]]]:
    t = study.trials.sort_values(SELECT_METRIC, ascending=False, na_position="last") \
        if SELECT_METRIC in study.trials else study.trials
    keys = []
    for p in study.plan.get("search", []):
        if p["key"] != "method" and p["key"] in t:
            keys.append(p["key"])
    probes = [f"val/acc_{m}" for m in study.modalities]
    cols = ["stage", "trial_id", "method", "status", "epochs_run", SELECT_METRIC, TEST_METRIC, "balance/gap",
            *probes, *keys]
    cols = [c for c in cols if c in t]
    rows = [[row.get(c) if not (isinstance(row.get(c), float) and math.isnan(row.get(c))) else None for c in cols]
            for _, row in t.iterrows()]
    return cols, rows


def reproduce(study: Study) -> list[str]:
    plan = study.plan
    folder = study.study_dir or Path(plan.get("storage", "runs/studies")) / study.name
    cmd = ["python", "-m", "drl_tune.run", "--space", plan.get("space_path", plan.get("space_name", "SPACE")),
           "--name", f"{study.name}-again", "--storage", str(Path(folder).parent),
           "--num-samples", str(plan.get("num_samples", "")), "--seed", str(plan.get("seed", ""))]
    if plan.get("searcher", "tpe") != "tpe":
        cmd += ["--searcher", str(plan["searcher"])]
    if plan.get("objectives"):
        cmd += ["--objectives", ",".join(f"{o['metric']}:{o['mode']}" for o in plan["objectives"])]
    cmd += [f"--set={k}={'null' if v is None else v}" for k, v in plan.get("overrides", {}).items()]
    lines = [" ".join(shlex.quote(c) for c in cmd if c)]
    lines.append(f"python -m drl_tune.report --path {shlex.quote(str(folder))}")
    if plan.get("mlflow_uri"):
        from drl_tune.study.tracking import ui_command

        lines.append(ui_command(plan["mlflow_uri"]))
    return lines


def render(study: Study, figures: dict[str, list[Path]]) -> str:
    n = study.trials
    counts = n.groupby(["stage", "status"]).size().to_dict()
    count_text = ", ".join(f"{v} {stage} {status}" for (stage, status), v in sorted(counts.items()))
    imgs = []
    for name, paths in figures.items():
        png = next(p for p in paths if p.suffix == ".png")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        imgs.append(f"<figure id='fig-{name}'><img alt='{name}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>")
    cols, rows = search_rows(study)
    plan = study.plan
    style = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}
img{max-width:100%}figcaption{font-size:13px;color:#555}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
.note{color:#8a4b00}"""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>drl-tune study {html.escape(study.name)}</title><style>{style}</style></head><body>",
        f"<h1>Study {html.escape(study.name)}</h1>",
        f"<p>Space <code>{html.escape(str(plan.get('space_name', '?')))}</code>, objective "
        f"<code>{html.escape(str(plan.get('mode', 'max')))} {html.escape(str(plan.get('metric', SELECT_METRIC)))}"
        f"</code>; {len(n)} trials ({html.escape(count_text)}). Read from <code>{html.escape(study.source)}</code>, "
        f"{time.strftime('%Y-%m-%d %H:%M')}.</p>",
        "<h2>Answer</h2>", answer_section(study),
        "<h2>Figures</h2>", *imgs,
        "<h2>Search trials</h2><p>Ranked by the selection metric. Test figures are reported, never ranked on; "
        "the best search score is optimistic (a maximum over noisy trials).</p>",
        _table(cols, rows, "search"),
        "<h2>Reproduce</h2><pre>" + html.escape("\n".join(reproduce(study))) + "</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(study_dir: Path | str, out: Path | str | None = None, study: Study | None = None) -> Path:
    """Load the study in ``study_dir`` (Tune folder), draw its figures into ``OUT/figures`` and write
    ``OUT/report.html`` (``OUT`` defaults to ``study_dir/report``). Returns the HTML file's path."""
    from drl_tune.analysis.plots import all_figures

    study = study or load_tune(study_dir)
    out_dir = Path(out) if out is not None else Path(study_dir) / "report"
    figures = all_figures(study, out_dir / "figures")
    path = out_dir / "report.html"
    atomic_write_text(path, render(study, figures))
    return path


def trials_table(study: Study) -> pd.DataFrame:
    """The search table as a frame (what the report shows), for notebooks."""
    cols, rows = search_rows(study)
    return pd.DataFrame(rows, columns=cols)
