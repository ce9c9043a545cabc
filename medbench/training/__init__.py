"""Training: loop, losses, schedule, checkpoints, evaluation and the run pipeline."""
