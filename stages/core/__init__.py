"""What every stage shares: runner and artifacts, generation backends, steps, answers, sources."""
