"""The flags several commands read, `need`, `Command` (one row of the command table in
adaflow/cli.py) and `load_generator` (the sampler of any finished workdir, for `sample`, `eval` and
`eval fid`). absl keeps all flags in one global table; a Command names the flags it reads, so
`adaflow <command> --help` lists those only."""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Optional, Union

from absl import app, flags
from ml_collections import config_flags

from adaflow import storage
from adaflow.compose.generator import ComposedGenerator
from adaflow.config_defaults import merged_config
from adaflow.parallel import make_mesh
from adaflow.parallel.host import is_writer
from adaflow.parallel.precision import describe_compute_dtype
from adaflow.pipelines.grouped import is_grouped_workdir, load_grouped
from adaflow.pipelines.recipe import is_composed_workdir, load_composed
from adaflow.train.loop import config_of, load_trainer_and_params

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py); override fields "
                                "with --config.a.b=value.", lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
flags.DEFINE_bool("debug", False, "Show the Python traceback of user errors (also ADAFLOW_DEBUG=1).")
flags.DEFINE_integer("num", 64, "Number of images (`sample`; `fid`: 50000 unless given).", lower_bound=1)
flags.DEFINE_string("out", None, "Output path (`sample`: PNG grid, default <workdir>/samples/cli_step_<step>.png; "
                    "`convert`, `convert-stages`: the workdir to write; `inspect ratios`: the heat map PNG).")


class Command(NamedTuple):
  """`adaflow <name>` runs `fn()` (so does calling the Command), which reads the flags `flags`."""
  name: str
  fn: Callable[[], object]
  flags: tuple = ("config", "workdir")

  def __call__(self):
    return self.fn()

  @property
  def summary(self) -> str:   # its line in `adaflow --help`
    return (self.fn.__doc__ or "").strip().split("\n")[0]


def need(flag: str):
  """Value of a required flag, or a usage error naming it."""
  value = getattr(FLAGS, flag)
  if value is None:
    raise app.UsageError(f"--{flag} is required for this command")
  return value


class LoadedGenerator(NamedTuple):
  """What `sample`, `eval` and `eval fid` need of a finished workdir."""
  generator: Any        # generate_images' generator (DiT family: ComposedGenerator; DQ: its objective)
  params: Any
  config: Any           # the generator's config (its sample / eval fields are read)
  info: Any             # adaflow.data DatasetInfo
  mesh: Any
  step: Union[int, str]   # the checkpoint step; "grouped" / "composed" for a multi-run workdir


def stored_config(workdir: str):
  """The config `load_generator(workdir)` uses when given none: a training run's (stored with its
  latest checkpoint), a train-then-prune workdir's (stage 1's, which carries config.grouped) or an
  `adaflow compose` workdir's (W/config.json, the recipe's)."""
  if is_grouped_workdir(workdir):
    return config_of(os.path.join(workdir, "stage1"))
  if is_composed_workdir(workdir):
    return merged_config(storage.read_json(os.path.join(workdir, "config.json")))
  return config_of(workdir)


def load_generator(workdir: str, config: Optional[Any] = None) -> LoadedGenerator:
  """The sampler of `workdir` and its parameters: a training run (its objective's generator; the
  composed one for the DiT family), a train-then-prune workdir (stage1/ + prune/ + group_i/: the
  composed generator with timestep groups) or an `adaflow compose` workdir (composed.json: the
  recipe's final generator, without its step policy, which `adaflow sample --selector W/selector`
  uses). `config` overrides the stored one (that run's kind of config). Says the compute dtype."""
  if is_grouped_workdir(workdir):
    generator, params, config = load_grouped(workdir, config)
    loaded = LoadedGenerator(generator, params, config, generator.info, make_mesh(config.mesh), "grouped")
  elif is_composed_workdir(workdir):
    config, info, params, _ = load_composed(workdir, selector=False, config=config)
    generator = ComposedGenerator(config, info)
    generator.check_params(params)
    loaded = LoadedGenerator(generator, params, config, info, make_mesh(config.mesh), "composed")
    if is_writer() and "selector_dir" in storage.read_json(os.path.join(workdir, "composed.json")):
      print(f"the composed generator at config.sample's solver, without the recipe's step policy (`adaflow sample "
            f"--selector {os.path.join(workdir, 'selector')}` samples with it; `adaflow compose`'s eval.json "
            "measured it)")
  else:
    tr, params, step = load_trainer_and_params(workdir, config)
    if is_writer():
      print(tr.objective.describe_compute())
    return LoadedGenerator(tr.generator(), params, tr.config, tr.info, tr.mesh, int(step))
  if is_writer():
    print(describe_compute_dtype(loaded.config.model))
  return loaded
