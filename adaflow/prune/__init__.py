"""adaflow.prune."""
