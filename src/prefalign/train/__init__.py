"""Training: the step (forward -> objective -> reduce -> metrics), checkpoints and the one loop."""
