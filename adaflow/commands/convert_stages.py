"""`adaflow convert-stages --workdir <dense run> --config <ppflow config> --out <dir>`.

Initialises a PPFlow (multi-stage) model from the latest checkpoint (EMA weights) of a trained
one-level DiT run, as the PPFlow paper (arXiv 2506.23543) prescribes (see `adaflow.models.ppflow.convert_dense_params`),
and writes it as a step-0 checkpoint into `--out`. Then either

    adaflow train --config <ppflow config> --workdir <dir>      # fine-tune in place (resumes step 0)
    adaflow train --config <ppflow config> --workdir <new> --init <dir>

The dense run's model (width, depth, heads, base patch, image shape, classes) must match the
PPFlow config's; every mismatch is a ValueError before anything is compiled.
"""
from __future__ import annotations

from absl import app

from adaflow.commands.common import FLAGS, Command, need
from adaflow.pipelines.convert_stages import convert_workdir


def cmd_convert_stages():
  """Initialise a PPFlow (multi-stage) model from a trained dense DiT run."""
  if FLAGS.out is None:
    raise app.UsageError("--out is required for `convert-stages` (the workdir to write the PPFlow checkpoint to)")
  convert_workdir(need("workdir"), need("config"), FLAGS.out)


COMMANDS = (Command("convert-stages", cmd_convert_stages, ("workdir", "config", "out")),)
