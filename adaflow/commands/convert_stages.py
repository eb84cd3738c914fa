"""`adaflow convert-stages --workdir <dense run> --config <ppflow config> --out <dir>`.

Initialises a PPFlow (multi-stage) model from the latest checkpoint (EMA weights) of a trained
one-level DiT run, as SPEC section 1 prescribes (see `adaflow.models.ppflow.convert_dense_params`),
and writes it as a step-0 checkpoint into `--out`. Then either

    adaflow train --config <ppflow config> --workdir <dir>      # fine-tune in place (resumes step 0)
    adaflow train --config <ppflow config> --workdir <new> --init <dir>

The dense run's model (width, depth, heads, base patch, image shape, classes) must match the
PPFlow config's; every mismatch is a ValueError before anything is compiled.
"""
from __future__ import annotations

from absl import app

from adaflow.commands.registry import FLAGS, command, need


def convert_workdir(dense_workdir: str, config, out_dir: str, log=print) -> str:
  """Converts the dense run in `dense_workdir` for the PPFlow `config`; writes `out_dir`. Returns it."""
  import jax
  from adaflow.train.restore import load_params
  from adaflow.objectives.ppflow import PPFlowObjective
  from adaflow.train.loop import Trainer
  from adaflow.train import checkpoint as ckpt
  from adaflow.train.sharded_state import init_state
  from adaflow.models.ppflow import convert_params_for

  if config.get("objective") != "ppflow":
    raise ValueError("config.objective: convert-stages needs a PPFlow config (objective='ppflow' with "
                     f"model.stages), got {config.get('objective')!r}")
  tr = Trainer(config, out_dir, log=log)
  dense = load_params(dense_workdir)
  params = convert_params_for(tr.objective, dense, jax.random.PRNGKey(config.seed))
  state = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings, params=params)
  manager = ckpt.make_manager(out_dir, async_save=False)
  meta = dict(tr.meta(), converted_from=dense_workdir)
  ckpt.save(manager, 0, state, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  log(f"wrote {ckpt.checkpoint_dir(out_dir)}/0: {tr.objective.schedule.num_stages}-stage model from {dense_workdir}")
  return out_dir


@command("convert-stages")
def cmd_convert_stages():
  if FLAGS.out is None:
    raise app.UsageError("--out is required for `convert-stages` (the workdir to write the PPFlow checkpoint to)")
  convert_workdir(need("workdir"), need("config"), FLAGS.out)
