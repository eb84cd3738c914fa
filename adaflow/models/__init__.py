"""adaflow.models."""
