-- A second database on the same server for Optuna studies (MLflow uses the `mlflow` one).
CREATE DATABASE optuna;
