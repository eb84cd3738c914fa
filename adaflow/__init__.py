"""adaflow: JAX/Flax training of image generative models that spend compute only where it matters."""

__version__ = "0.1.0"
