"""Retrain: continuous training for tabular models on Prefect, MLflow, Optuna and Evidently."""

__version__ = "0.1.0"
