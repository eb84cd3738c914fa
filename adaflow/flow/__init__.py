"""adaflow.flow."""
