"""adaflow.eval."""
