"""adaflow.rl."""
