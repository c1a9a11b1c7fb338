"""Published figures to print beside ours: BalanceBenchmark's results table (Xu et al., 2025).

Why a hand-typed table: BalanceBenchmark publishes its results only as a picture in its README
(``images/Results.jpeg``, added in commit 1a57ccb of GeWu-Lab/BalanceBenchmark, 2025-02-14; the README's
"Results" section shows it). The figures below were typed from that picture for the three datasets this project
prepares (Kinetics-Sounds, CREMA-D, UCF-101): accuracy and macro-F1 in percent, as printed. They are one run each
(seed 42), one fixed setting per method, and selected on the *test* set (their loaders use the test split as
validation when a dataset has none,
``balancemm/utils/data_utils.py``) — the table marks them so, and never ranks them with
ours.

Names are this project's method names; BalanceBenchmark's are in ``BB_NAMES``. Methods BalanceBenchmark has and
this project does not yet (MBSD, LFM, Greedy, AMCo) are kept under the names they will have, so a method added later
finds its figure without editing this file.
"""

from __future__ import annotations

from typing import Any

SOURCE = "BalanceBenchmark"
CITATION = ("Xu, Cui, Huang, Wang and Hu, BalanceBenchmark: A Survey for Multimodal Imbalance Learning, "
            "arXiv:2502.10816 (2025); the results table of github.com/GeWu-Lab/BalanceBenchmark's README "
            "(images/Results.jpeg, commit 1a57ccb)")
CAVEAT = "one seed (42), one fixed setting per method, selected on the test set"

# this project's dataset name (the plan's data.name) -> its column in BalanceBenchmark's table
DATASETS = {"kinetics_sounds": "KineticsSounds", "cremad": "CREMA-D", "ucf101": "UCF-101"}

# this project's method name -> BalanceBenchmark's row
BB_NAMES = {"joint": "Baseline", "mmcosine": "MMCosine", "umt": "UMT", "mbsd": "MBSD", "cml": "CML",
            "gblending": "GBlending", "mmpareto": "MMPareto", "lfm": "LFM", "ogm_ge": "OGM", "agm": "AGM",
            "pmr": "PMR", "drl": "Relearning", "reconboost": "ReconBoost", "mla": "MLA", "opm": "OPM",
            "greedy": "Greedy", "amco": "AMCo", "valuation": "Modality-valuation"}

# BalanceBenchmark's row -> column -> (accuracy %, macro-F1 %); None where the table prints "–"
FIGURES: dict[str, dict[str, tuple[float, float] | None]] = {
    "Baseline": {"KineticsSounds": (65.63, 65.28), "CREMA-D": (65.50, 65.07), "UCF-101": (81.80, 81.21)},
    "MMCosine": {"KineticsSounds": (67.49, 67.09), "CREMA-D": (67.19, 67.34), "UCF-101": (82.97, 82.47)},
    "UMT": {"KineticsSounds": (68.60, 68.43), "CREMA-D": (67.47, 67.75), "UCF-101": (84.18, 83.56)},
    "MBSD": {"KineticsSounds": (68.82, 68.28), "CREMA-D": (74.86, 75.48), "UCF-101": (84.61, 84.26)},
    "CML": {"KineticsSounds": (67.56, 67.22), "CREMA-D": (69.18, 69.57), "UCF-101": (84.74, 84.28)},
    "GBlending": {"KineticsSounds": (68.82, 66.43), "CREMA-D": (71.59, 71.72), "UCF-101": (85.01, 84.50)},
    "MMPareto": {"KineticsSounds": (74.55, 74.21), "CREMA-D": (79.97, 80.57), "UCF-101": (85.30, 84.89)},
    "LFM": {"KineticsSounds": (66.37, 66.02), "CREMA-D": (70.02, 69.55), "UCF-101": (84.95, 84.35)},
    "OGM": {"KineticsSounds": (67.04, 66.95), "CREMA-D": (67.76, 68.02), "UCF-101": (82.07, 81.30)},
    "AGM": {"KineticsSounds": (66.62, 65.88), "CREMA-D": (71.59, 72.11), "UCF-101": (81.70, 80.89)},
    "PMR": {"KineticsSounds": (67.11, 66.87), "CREMA-D": (67.19, 67.20), "UCF-101": (81.93, 81.48)},
    "Relearning": {"KineticsSounds": (65.92, 65.48), "CREMA-D": (71.02, 71.46), "UCF-101": (82.87, 82.15)},
    "ReconBoost": {"KineticsSounds": (68.38, 67.68), "CREMA-D": (74.01, 74.52), "UCF-101": (82.89, 82.26)},
    "MLA": {"KineticsSounds": (69.05, 68.75), "CREMA-D": (72.30, 72.66), "UCF-101": (85.38, 84.84)},
    "OPM": {"KineticsSounds": (66.89, 66.44), "CREMA-D": (68.75, 69.00), "UCF-101": (85.28, 83.79)},
    "Greedy": {"KineticsSounds": (66.82, 66.53), "CREMA-D": (66.48, 66.54), "UCF-101": None},
    "AMCo": {"KineticsSounds": (70.54, 69.95), "CREMA-D": (73.30, 73.95), "UCF-101": (86.91, 86.66)},
    "Modality-valuation": {"KineticsSounds": (68.01, 68.03), "CREMA-D": (75.85, 76.68), "UCF-101": (85.25, 84.69)},
}


def published(dataset_name: str | None, method: str) -> dict[str, Any] | None:
    """BalanceBenchmark's figure for ``method`` on ``dataset_name`` as fractions (our scale), or None when it
    published none (a dataset it does not have, a method it does not run — InfoReg — or a "–" cell)."""
    column = DATASETS.get(dataset_name or "")
    row = FIGURES.get(BB_NAMES.get(method, ""), {})
    cell = row.get(column) if column else None
    if cell is None:
        return None
    return {"acc": round(cell[0] / 100, 4), "macro_f1": round(cell[1] / 100, 4), "source": SOURCE,
            "name": BB_NAMES[method], "column": column}
