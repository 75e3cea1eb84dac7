"""What every stage runs on: the config checks, the training loop (schedule, preemption, evaluation), checkpoints, metric writers and the progress bar."""
