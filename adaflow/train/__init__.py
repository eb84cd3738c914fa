"""adaflow.train."""
