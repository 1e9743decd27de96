"""Where results go after a run: the JSON Lines history, MLflow, JUnit reports."""
