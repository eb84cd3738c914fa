"""ComposedGenerator: the flow-matching sampler for any subset of {PPFlow stages, routing, timestep
groups}. The timestep groups, PPFlow stages and routing regions are `flow.TimePartition`s; the
time grid meets their edges by `config.sample.edges` (`sampling_grid`) and is cut into runs of
steps with the same (group, stage) networks (`runs`). Each run is integrated with `flow.integrate`
by group g's network at stage s (routing: "infer" mode, the snapped bin of each step's timestep
region), with stage s's CFG scale.

It is the one sampler of the DiT family: every DiT-family method is a preset of the composed model
(adaflow.methods), so a run of any of them samples with it, reading its parameters as they are.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaflow import flow
from adaflow.compose import flops as flops_lib
from adaflow.compose import model as model_lib
from adaflow.compose.spec import ComposeSpec, spec_from_config
from adaflow.models.routing.ratios import ratio_table, snapped_table
from adaflow.models.routing.routed_dit import RoutedDiT

# Specialized generators kept per composed generator (`ComposedGenerator.specialize`): training
# with evaluation meets a new ratio table at most once per evaluation, so a few suffice.
_SPECIALIZED_KEPT = 4


class ComposedGenerator:
  """Generator of a composed model (see module docstring):
  `generate(params, rng, labels, *, steps, method, cfg_scale, grid)`."""

  has_maps = False   # as on every objective that samples itself (adaflow.objectives.base): no DQ code maps
  uses_solver_settings = True   # `generate` integrates with the flow solver's steps / method / CFG scale

  def __init__(self, config, info, spec: Optional[ComposeSpec] = None):
    self.config, self.info = config, info
    self.spec = spec if spec is not None else spec_from_config(config, info)
    self.num_classes = info.num_classes
    self.null_label = info.num_classes
    self.interpolant = flow.make_interpolant(config.flow)
    self.base = model_lib.base_model(config, info, self.spec)
    self.models = model_lib.group_models(self.base, self.spec)
    self.routed = isinstance(self.base, RoutedDiT)
    self.grouped = self.spec.blocks_per_group is not None
    self.class_dropout = float(config.model.class_dropout)
    self._specialized: dict = {}

  # ---- parameters ---------------------------------------------------------------------------
  def init(self, rng: jax.Array):
    """Boxed variables in the composed layout (every stage, routers/rho, every group)."""
    return model_lib.init_params(self.models, rng, self.info, self.grouped)

  def check_params(self, params: Any) -> None:
    model_lib.check_params(params, self.models, self.info, self.spec)

  def condition_params(self, params: Any) -> Any:
    """The tree whose `['params']['y_embed']` the AdaDiff policy reads: the last group's (the
    group at the data end, t ~ 1)."""
    return model_lib.group_params(params, self.spec, self.spec.num_groups - 1)

  @staticmethod
  def sampling_record(steps: int, method: str, cfg_scale: float) -> dict:
    """The solver settings `generate` was called with, as eval.json and FID's result.json record them."""
    return dict(sample_steps=int(steps), sample_method=method, cfg_scale=float(cfg_scale))

  def specialize(self, params: Any) -> "ComposedGenerator":
    """The generator to sample `params` with: for learned routing, one whose networks carry the
    snapped inference ratios of `params` as static tables (`RoutingSpec.snapped`), so that each
    routed layer compiles only the ratio bins it uses (same samples, fewer branches to compile);
    otherwise itself. The same tables give the same object, so its compiled samplers
    (adaflow.flow.driver) are reused. Reads the small `rho` params on the host (replicated)."""
    if not self.routed or not self.spec.routing.learned:
      return self
    spec = self.spec.routing
    tables = tuple(tuple(tuple(float(b) for b in row)
                         for row in snapped_table(ratio_table(model_lib.group_params(params, self.spec, g), spec), spec))
                   for g in range(len(self.models)))
    if tables not in self._specialized:
      while len(self._specialized) >= _SPECIALIZED_KEPT:
        self._specialized.pop(next(iter(self._specialized)))
      gen = copy.copy(self)
      gen._specialized = {}
      gen.models = tuple(m.clone(routing=dataclasses.replace(spec, snapped=table), parent=None)
                         for m, table in zip(self.models, tables))
      self._specialized[tables] = gen
    return self._specialized[tables]

  # ---- dispatch -----------------------------------------------------------------------------
  def partitions(self) -> tuple[flow.TimePartition, flow.TimePartition, flow.TimePartition]:
    """(groups, PPFlow stages, routing regions) as time partitions (one bucket when a method is off)."""
    one = flow.TimePartition.single()
    groups = flow.TimePartition(tuple(self.spec.edges)) if self.grouped else one
    stages = self.spec.schedule.partition if self.spec.schedule is not None else one
    regions = flow.TimePartition(tuple(self.spec.routing.boundaries)) if self.routed else one
    return groups, stages, regions

  def sampling_grid(self, steps: int, grid: Optional[np.ndarray] = None, edges: Optional[str] = None) -> np.ndarray:
    """The grid sampling integrates on: `steps` uniform steps (or `grid`) meeting the partition
    edges by `edges` (default `config.sample.edges`; adaflow.flow.partition). "insert" adds every
    edge (routing regions included, as before); "snap" moves grid points onto the edges where the
    network changes (PPFlow stages first, then groups; a routing region only changes the ratio,
    which the routed network reads from t itself, so it needs no grid point); "cross" keeps the
    grid."""
    grid = flow.time_grid(int(steps)) if grid is None else np.asarray(grid, np.float64)
    rule = self.config.sample.edges if edges is None else edges
    groups, stages, regions = self.partitions()
    if rule == "insert":
      return flow.edge_grid(grid, (groups, stages, regions), rule)
    return flow.edge_grid(grid, (stages, groups), rule)

  def runs(self, grid: np.ndarray) -> list[flow.StepRun]:
    """The sampling grid (from `sampling_grid`) cut into runs of steps with the same networks:
    `start` = (group, stage) of each step's first evaluation, `end` = of Heun's second one (they
    differ only on a step that crosses an edge: `sample.edges = "cross"` or an edge "snap" could
    not meet)."""
    groups, stages, _ = self.partitions()
    return flow.step_runs(grid, (groups, stages))

  def sampling_flops(self, params, steps: int, method: str, cfg_scale: float) -> float:
    """Analytic network FLOPs of one sample (adaflow.compose.flops)."""
    return flops_lib.sampling_flops(self, params, steps, method, cfg_scale)

  def network_evaluations(self, steps: int, method: str, grid: Optional[np.ndarray] = None) -> int:
    """Network evaluations per image (without the CFG doubling) of one sample."""
    n = len(self.sampling_grid(steps, grid)) - 1
    return 2 * n if method == "heun" else n

  def stage_cfg_scales(self, cfg_scale: float) -> tuple[float, ...]:
    scales = self.spec.cfg_scales if self.spec.cfg_scales is not None else (float(cfg_scale),) * self.spec.num_stages
    if not self.num_classes and any(float(x) != 1.0 for x in scales):
      raise ValueError(f"CFG scale {cfg_scale if self.spec.cfg_scales is None else scales}: this model is "
                       "unconditional (trained without labels) and cannot be guided; sample with --cfg 1")
    return scales

  # ---- networks -----------------------------------------------------------------------------
  def apply(self, params, g: int, x, t, y, *, stage: int = 0, mode: str = "infer"):
    """Group g's network at `stage`: [B, H, W, C] prediction. `mode` (routing) is "infer" for
    sampling, "train" for the differentiable-ratio training path."""
    kw = {"mode": mode} if self.routed else {}
    return self.models[g].apply(model_lib.group_params(params, self.spec, g), x, t, y, stage=stage, **kw)

  def velocity_fn(self, params, g: int, stage: int, labels: jax.Array, cfg_scale: float):
    def model_fn(x, t, y):
      return self.interpolant.velocity(self.apply(params, g, x, t, y, stage=stage), x, t)
    return flow.guided(model_fn, labels, self.null_label, cfg_scale)

  # ---- sampling -----------------------------------------------------------------------------
  def integrate_noise(self, params, labels: jax.Array, noise: jax.Array, *, steps: int, method: str = "heun",
                      cfg_scale: float = 1.0, grid: Optional[np.ndarray] = None,
                      solver_rng: Optional[jax.Array] = None) -> jax.Array:
    """noise [B, H, W, C] -> samples, `steps` uniform steps (or `grid`) meeting the partition
    edges by `config.sample.edges` (`sampling_grid`). The AdaDiff selector calls this
    (adaflow.objectives.step_selector) to run the composed generator at a chosen step count.

    Every run of the grid (`runs`) is integrated with the interpolant (so the network is never
    evaluated at its prediction's singular end) and `config.sample`'s SDE settings; `solver_rng`
    drives the SDE's Brownian increments (run k uses fold_in(solver_rng, k): no increment is
    reused). A multistep solver (ab2) keeps its velocity history across runs; with
    `sample.multistep_history = "restart"` it restarts with one Euler step where the network
    (PPFlow stage or timestep group) changes. Routing regions never restart it: the routed
    network reads its region from t, so its steps stay in one run."""
    grid = self.sampling_grid(steps, grid)
    scales = self.stage_cfg_scales(cfg_scale)
    opts = flow.solver_options(self.config.sample, self.interpolant, None)
    restart = self.config.sample.multistep_history == "restart"
    x, history, prev = noise, None, None
    for k, run in enumerate(self.runs(grid)):
      rng = None if solver_rng is None else jax.random.fold_in(solver_rng, k)
      (g, s), (g_end, s_end) = run.start, run.end
      if restart and run.start != prev:
        history = None
      x, history = flow.integrate(self.velocity_fn(params, g, s, labels, scales[s]), x, run.grid, method,
                                  end_velocity_fn=self.velocity_fn(params, g_end, s_end, labels, scales[s_end]),
                                  history=history, return_history=True, **dict(opts, rng=rng))
      prev = run.start     # the network of the run's first evaluations (ab2 evaluates only there)
    return x

  def noise(self, rng: jax.Array, batch: int) -> jax.Array:
    return jax.random.normal(rng, (batch,) + tuple(self.info.image_shape), jnp.float32)

  def generate(self, params, rng: jax.Array, labels: jax.Array, *, steps: int, method: str = "heun",
               cfg_scale: float = 1.0, grid: Optional[np.ndarray] = None) -> jax.Array:
    """labels [B] -> images [B, H, W, C] (not clipped); noise [B, H, W, C] = normal(rng)."""
    return self.integrate_noise(params, labels, self.noise(rng, labels.shape[0]), steps=steps, method=method,
                                cfg_scale=cfg_scale, grid=grid, solver_rng=jax.random.fold_in(rng, 1))
