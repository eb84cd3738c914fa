"""adaflow.parallel."""
