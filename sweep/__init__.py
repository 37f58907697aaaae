"""sweep: the search service (CLI ``sweep/main.py``, search space, Ray Tune + Optuna, MLflow, best-settings store)."""
