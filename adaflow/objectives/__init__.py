"""adaflow.objectives."""
