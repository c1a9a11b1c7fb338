"""What one training run needs: the configuration and its documented keys, the one epoch loop (engine), DRL's
diagnosis, the metrics, the GPU path (accel), atomic writes, errors, paths and the statistics of the answer.
Nothing here knows about Ray, Optuna or MLflow."""
