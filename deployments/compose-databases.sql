-- One database per store, as `make stack` creates them (deployments/stack.py, prefix retrain_stack).
CREATE DATABASE retrain_stack_warehouse;
CREATE DATABASE retrain_stack_mlflow;
CREATE DATABASE retrain_stack_prefect;
CREATE DATABASE retrain_stack_optuna;
