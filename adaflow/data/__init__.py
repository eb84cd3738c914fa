"""adaflow.data."""
