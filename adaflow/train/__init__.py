"""Train state, jitted step, loop, checkpoints, logging and evaluation glue."""
