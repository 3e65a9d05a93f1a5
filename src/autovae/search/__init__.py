"""AutoVAE: Optuna searches over beliefs (pairings, likelihood), bounds and networks.

The objective trains with the same code as ``autovae train``; a study runs on one machine with an
embedded SQLite store, or on many sharing a PostgreSQL database.
"""

from .analysis import analyze, importances, retrain_best, trial_table
from .space import PRESETS, SearchSpace, allocate
from .study import (
           OBJECTIVES,
           PRUNERS,
           SAMPLERS,
           StudySpec,
           create_study,
           open_storage,
           run_search,
           run_worker,
)

__all__ = ["OBJECTIVES", "PRESETS", "PRUNERS", "SAMPLERS", "SearchSpace", "StudySpec", "allocate",
           "analyze", "create_study", "importances", "open_storage", "retrain_best", "run_search",
           "run_worker", "trial_table"]
