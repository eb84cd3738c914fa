"""A dense DiT run -> a PPFlow (multi-stage) step-0 checkpoint (`adaflow convert-stages`, and the
PPFlow stage of the compose recipe): EMA weights of the dense run converted as the PPFlow paper (arXiv 2506.23543)
prescribes (`adaflow.models.ppflow.convert_dense_params`)."""
from __future__ import annotations

import jax

from adaflow import storage
from adaflow.models.dit import DIT_SIZES
from adaflow.models.ppflow import convert_params_for
from adaflow.train import checkpoint as ckpt
from adaflow.train.loop import Trainer, config_of, load_params
from adaflow.train.sharded_state import init_state


def convert_workdir(dense_workdir: str, config, out_dir: str, log=print) -> str:
  """Converts the dense run in `dense_workdir` for the PPFlow `config`; writes `out_dir`. Returns it."""
  if config.objective != "ppflow":
    raise ValueError("config.objective: convert-stages needs a PPFlow config (objective='ppflow' with "
                     f"model.stages), got {config.objective!r}")
  check_same_network(config_of(dense_workdir), config, dense_workdir)
  storage.check_writable(out_dir, "--out")   # creates it; a bad path fails before any conversion
  tr = Trainer(config, out_dir, log=log)
  dense = load_params(dense_workdir)
  params = convert_params_for(tr.objective, dense, jax.random.PRNGKey(config.seed))
  state = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings, params=params)
  manager = ckpt.make_manager(out_dir, async_save=False)
  meta = dict(tr.meta(), converted_from=dense_workdir)
  ckpt.save(manager, 0, state, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  log(f"wrote {ckpt.checkpoint_dir(out_dir)}/0: {tr.objective.spec.num_stages}-stage model from {dense_workdir}")
  return out_dir


def check_same_network(dense_config, config, dense_workdir: str) -> None:
  """Before anything is built: the PPFlow config's network (width, depth, heads, MLP ratio, sigma
  output, and its base patch = the finest stage's) is the dense run's, which conversion keeps."""
  def fields(m):
    depth, hidden, heads = DIT_SIZES.get(m.size, (m.depth, m.hidden_size, m.num_heads))   # a bad name: Trainer's error
    return dict(patch_size=m.patch_size, depth=depth, hidden_size=hidden, num_heads=heads, mlp_ratio=m.mlp_ratio,
                learn_sigma=m.learn_sigma)
  have, want = fields(dense_config.model), fields(config.model)
  for field, value in want.items():
    if have[field] != value:
      raise ValueError(f"config.model.{field}: the dense run {dense_workdir} has {field}={have[field]!r}, this "
                       f"PPFlow config {value!r}; convert-stages keeps the dense network (its patch is the finest "
                       f"stage's): set --config.model.{field}={have[field]!r} or convert a dense run trained with {value!r}")
