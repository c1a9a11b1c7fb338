"""Study analysis: load a study (Tune folder or MLflow) into tidy frames, draw its figures, write its report.
Used by the notebooks in ``analysis/`` and by ``python -m drl_tune.report``."""

from drl_tune.analysis import plots
from drl_tune.analysis.budget import budget_curves
from drl_tune.analysis.html_report import write_report
from drl_tune.analysis.load import Study, StudyError, load_mlflow, load_study, load_tune

__all__ = ["Study", "StudyError", "budget_curves", "load_mlflow", "load_study", "load_tune", "plots", "write_report"]
