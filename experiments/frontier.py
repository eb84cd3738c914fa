"""Each method's own quality-vs-compute frontier against dense's, every method on dense's grid
(issue #25; the protocol of #17), on the crops 32x32 testbed.

    flock /tmp/adaflow-bench.lock python -m experiments.frontier --base /work/testbed/dense --reuse
    python -m experiments.frontier --smoke --work /tmp/frontier_smoke     # minutes; numbers meaningless

(from the repository root). Protocol (the papers': every method starts from a trained dense model
and adds a fraction of its training images); each method's own settings (DiffCR's bins, regions
and target, the pruning groups, the policy's inputs, the fine-tuning lr) are
configs/frontier_crops32.py, laid onto the base's config:

  base        a dense DiT trained once with configs/testbed_crops32.py (`--base`, default <work>/base;
              trained through run_stage when it has not finished); a copy of its latest checkpoint
              (<work>/dense) is what every arm starts from, so a base still training cannot change
              under the benchmark.
  PPFlow      convert-stages from the base (arXiv 2506.23543) + fine-tune. The paper's three levels
              (2p x 2p for t <= 0.5, p x 2p up to 0.75, then p x p) when their coarse tokens fit the
              model width, else two (p x 2p for t <= 0.5, then p x p): a token with more pixel values
              than the width cannot pass a velocity target's full-resolution noise part (the head's
              rank is at most the width), so that stage keeps a loss floor
              (adaflow.models.ppflow.PatchSchedule.over_capacity). The composed recipe uses the same.
  DiffCR      routing fine-tune with learned per-(layer, region) ratios (arXiv 2412.16822),
              routing.scale = "weight" (the router weight scales the MLP update, as its pseudocode).
  prune       train-then-prune (arXiv 2312.13307) with the base as stage 1: pruning search +
              stage 2 (each group's fine-tune).
  AdaDiff     a step policy (arXiv 2311.14768) over the frozen base: actions (solver, steps)
              (`--policy_actions`), cost in network evaluations (`--policy_cost`), per-input features
              (class embedding + noise statistics); no training images; its reward classifier is
              selector.classifier_seed, never the evaluation's.
  composed    adaflow.pipelines.recipe from the base, each ingredient with the same fine-tuning
              budget as its single-method arm (the PPFlow stage IS the PPFlow arm: the recipe's
              stage 2 is that same computation, so it is copied, not retrained), then the policy.
  ablations   opt-in (`--ablations`): `ppflow3` (the three-level PPFlow when the recipe's is the
              two-level one), `mod` (DiffCR's router at one fixed ratio = its target, Mixture-of-
              Depths arXiv 2404.02258), `scratch` (the recipe's PPFlow trained from random weights for
              base + fine-tune images, as PPFlow's paper also reports), `composed_split` (the composed
              recipe with ONE fine-tuning budget split over its three fine-tunes: what composing
              costs at a fixed budget, against the fair composed arm). Sampled at `--ablation_grid`.

Every model is sampled on dense's grid (`--grid`: solver:steps points; Euler, AB2 multistep and
Heun), on the grid through its partition edges (sample.edges = "snap": the same steps cost the same
network evaluations as dense) with AB2 keeping its history across edges (sample.multistep_history
= "keep"); beside them, at `--edge_steps` AB2 steps, the old rules for grouped and composed
(edges "insert": one more evaluation per edge) and PPFlow / grouped / composed with AB2 restarting
at each network change ("restart"), paired with the defaults.

Measured in one run, with the same labels and noise for every grid arm (batches of `--batch`, key
fold_in(eval key, i)): FD of `--num_eval` class-balanced samples against the evaluation
classifier's reference statistics (classifier features, not Inception) with a bootstrap 95%
interval; every arm's FD is resampled with the SAME `--resamples` index rows
(adaflow.eval.bootstrap), so a paired difference, a lower envelope and an interpolated speed-up
each get an interval from the same resamples; class accuracy; analytic FLOPs per image
(adaflow.compose.flops, the primary cost axis); ms/image steady state (median of `--reps` calls of
`--batch` images, interleaved over the arms of one model, after a first call whose excess time is
reported as compile time; one model's programs at a time, dropped before the next model's compile,
so the kernel's default vm.max_map_count suffices); NFE (network evaluations per image, without the
CFG doubling). The run-to-run spread of ms comes from two dense points timed again as separate
arms at the end of the run (the first timing was at its start). Floors: real-vs-real and
real-vs-reference (what a generator that samples the data exactly scores under this protocol).

Matched quality (experiments/frontier_report.py, which also writes the tables and the plot):
dense's lower envelope over ALL its solvers (cost vs FD, the points no cheaper point beats) is
interpolated linearly in log cost against FD; a method point's speed-up is the dense cost at its FD
over its own cost, and a method's frontier speed-up at FD level L is dense's envelope cost at L over
the method's envelope cost at L. Outside dense's FD range it is a bound ("> x" beyond dense's best
FD, "< x" worse than dense's cheapest point).

Resumable: every stage keeps a DONE marker (with its training seconds) and every arm's quality
measurement (features, actions) is kept in <work>/quality keyed by the settings and its stage's
marker, so `--reuse` after an interruption redoes only what is missing (timing always reruns).

Writes `--out` (default experiments/results/frontier.md; with --smoke <work>/frontier_smoke.md) and
the plot next to it (.png). Below, in order: the flags, the base, training the arms, measuring them,
`main`.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time

import jax
import numpy as np

from adaflow import data as data_lib
from adaflow import storage
from adaflow.methods import composed_config
from adaflow.compose.sampler import ComposedSampler
from adaflow.config_defaults import load_config_file, merged_config
from adaflow.eval import get_classifier, real_vs_real_fd
from adaflow.eval.bootstrap import fd_interval, interval_from_resamples, resample_indices, resampled_fds
from adaflow.eval.frechet import ReferenceFD, feature_statistics
from adaflow.flow.driver import balanced_labels
from adaflow.models import ppflow as ppflow_lib
from adaflow.models.step_selector import ACTION_METHODS, action_label
from adaflow.pipelines import recipe as recipe_lib
from adaflow.pipelines.convert_stages import convert_workdir
from adaflow.pipelines.grouped import load_grouped, run_grouped
from adaflow.pipelines.stages import run_stage, stage_done, train_stage
from adaflow.train import checkpoint as ckpt
from adaflow.train.diagnostics import enable_compilation_cache
from adaflow.train.loop import config_of, load_params
from experiments.common import RESULTS, ROOT, machine_line, matmul_flags, utc_now
from experiments.frontier_report import ADADIFF, COMPOSED, COMPOSED_POLICY, DENSE, PRUNE, ROUTED, plot, report

TESTBED = os.path.join(ROOT, "configs", "testbed_crops32.py")            # the dense base
SETTINGS = os.path.join(ROOT, "configs", "frontier_crops32.py")          # every arm's method settings
METHOD_SECTIONS = ("compose", "routing", "grouped", "selector")         # what SETTINGS lays onto the base
ABLATIONS = ("ppflow3", "mod", "scratch", "composed_split")
# --smoke: a pipeline check in minutes on 2 CPU cores; numbers mean nothing. These flags, and the
# configs' "smoke" variants (a smaller DiT trained 30 steps, tiny pruning search and policy batches).
SMOKE_FLAGS = dict(num_eval=64, batch=32, reps=2, grid="euler:2,ab2:4,heun:2", policy_actions="euler:2,ab2:4",
                   ablation_grid="ab2:4", edge_steps="4", fd_levels="50,100", selector_steps=2)


# ---- configuration ----------------------------------------------------------------------------
def parse_ints(text: str, flag: str) -> tuple[int, ...]:
  try:
    v = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"{flag}: comma-separated positive integers such as 4,8, got {text!r}") from None
  if not v or any(x < 1 for x in v):
    raise ValueError(f"{flag}: comma-separated positive integers such as 4,8, got {text!r}")
  return tuple(sorted(set(v)))


def parse_points(text: str, flag: str) -> tuple[tuple[str, int], ...]:
  """'euler:4,ab2:8' -> (('ab2', 8), ('euler', 4)): sampler points (solver, steps), sorted."""
  points = set()
  for item in (x.strip() for x in text.split(",") if x.strip()):
    m, _, n = item.partition(":")
    if m not in ACTION_METHODS or not n.isdigit() or int(n) < 1:
      raise ValueError(f"{flag}: comma-separated solver:steps points with a solver in {ACTION_METHODS}, e.g. "
                       f"euler:4,ab2:8,heun:8; got {item!r}")
    points.add((m, int(n)))
  if not points:
    raise ValueError(f"{flag}: at least one solver:steps point, e.g. euler:4,ab2:8, got {text!r}")
  return tuple(sorted(points))


def validate_args(args) -> None:
  """Every impossible setting fails here, before anything trains or compiles."""
  args.grid = parse_points(args.grid, "--grid")
  args.policy_actions = parse_points(args.policy_actions, "--policy_actions")
  args.ablation_grid = parse_points(args.ablation_grid, "--ablation_grid")
  args.edge_steps = parse_ints(args.edge_steps, "--edge_steps") if args.edge_steps.strip() else ()
  for flag, pts in (("--policy_actions", args.policy_actions), ("--ablation_grid", args.ablation_grid)):
    missing = [action_label(p) for p in pts if p not in args.grid]
    if missing:
      raise ValueError(f"{flag} {missing} not in --grid: every one is compared with dense (and the policy with its "
                       "own fixed actions) at the same point; add them to --grid")
  missing = [f"ab2:{s}" for s in args.edge_steps if ("ab2", s) not in args.grid]
  if missing:
    raise ValueError(f"--edge_steps: the edge and multistep-history checks run AB2 at these steps and pair them with "
                     f"the grid's; add {missing} to --grid (or drop them from --edge_steps)")
  try:
    args.fd_levels = tuple(sorted({float(x) for x in args.fd_levels.split(",") if x.strip()}))
  except ValueError:
    raise ValueError(f"--fd_levels: comma-separated FD values such as 0.3,0.5,1.0, got {args.fd_levels!r}") from None
  if not args.fd_levels or min(args.fd_levels) <= 0:
    raise ValueError(f"--fd_levels: comma-separated positive FD values such as 0.3,0.5,1.0, got {args.fd_levels!r}")
  args.ablations = tuple(x.strip() for x in args.ablations.split(",") if x.strip())
  if args.ablations == ("all",):
    args.ablations = ABLATIONS
  bad = [x for x in args.ablations if x not in ABLATIONS]
  if bad:
    raise ValueError(f"--ablations: a comma-separated subset of {','.join(ABLATIONS)} (or 'all'), got {bad}")
  if args.policy_cost not in ("nfe", "flops", "steps"):
    raise ValueError(f"--policy_cost: nfe, flops or steps, got {args.policy_cost!r}")
  if not 0.0 < args.ft_fraction <= 1.0:
    raise ValueError(f"--ft_fraction: the fine-tuning budget as a fraction of the base's training images, in "
                     f"(0, 1], got {args.ft_fraction}")
  if args.num_eval < 2 or args.batch < 1 or args.num_eval % args.batch:
    raise ValueError(f"--num_eval ({args.num_eval}) must be >= 2 and a multiple of --batch ({args.batch}), so "
                     "every arm samples the same batches")
  if args.selector_steps < 1:
    raise ValueError(f"--selector_steps: AdaDiff policy training steps, >= 1, got {args.selector_steps}")
  if args.reps < 1:
    raise ValueError(f"--reps: timed repetitions, >= 1, got {args.reps}")
  if args.resamples < 10:
    raise ValueError(f"--resamples: bootstrap resamples, >= 10, got {args.resamples}")
  # The largest timing block: the composed model's grid, its edge and history variants, the policy's
  # actions (one program each) and slack for the classifier.
  check_map_count(len(args.grid) + 2 * len(args.edge_steps) + len(args.policy_actions) + 4)


# Measured 2026-12-03: one process holding ~80 XLA:CPU sampler programs (all of this benchmark's arms,
# before they were timed one model at a time) ran out of memory mappings under the kernel's default
# vm.max_map_count (65,530) and died (exit 139, "LLVM compilation error: Cannot allocate memory").
PROGRAMS_PER_DEFAULT_MAP_COUNT = 60


def check_map_count(programs: int, path: str = "/proc/sys/vm/max_map_count") -> None:
  """Refuses, before anything trains, a run whose compiled programs would exhaust the kernel's
  memory-mapping limit during measurement."""
  try:
    with open(path) as f:
      limit = int(f.read())
  except (OSError, ValueError):
    return
  if programs > PROGRAMS_PER_DEFAULT_MAP_COUNT * limit / 65530:
    raise ValueError(f"vm.max_map_count is {limit}: about {programs} sampler programs of one model stay compiled "
                     f"together for its timing and need more mappings (the default 65,530 held ~80); raise it with "
                     f"`sudo sysctl -w vm.max_map_count=1048576`, or sample fewer --grid / --policy_actions points")


def base_train_config(args):
  """The dense base's training config: configs/testbed_crops32.py (its "smoke" variant under --smoke)."""
  c = load_config_file(TESTBED, "smoke" if args.smoke else None)
  c.eval.cache_dir = args.cache
  return c


def method_config(base, args, ft_steps: int):
  """Every arm's config: the base's own (model, data, sampling) with the method sections of
  configs/frontier_crops32.py (whatever the base had there) and what depends on the base and the
  flags: the composed recipe's PPFlow stages, the fine-tuning budget, the policy's flags."""
  settings = load_config_file(SETTINGS, "smoke" if args.smoke else None).copy_and_resolve_references()
  c = base.copy_and_resolve_references()
  for section in METHOD_SECTIONS:
    c[section] = settings[section]
  c.eval.cache_dir = args.cache
  c.eval.at_end = False            # the benchmark measures every arm itself
  c.train.final_samples = False
  c.train.sample_every = 0
  cc = c.compose
  cc.stages = ppflow_stages(c)[-1][1]    # the composed recipe's: the coarsest that fits the width
  cc.ppflow_steps = cc.routing_steps = cc.grouped_steps = ft_steps
  cc.finetune_warmup_steps = min(20, max(1, ft_steps // 10))
  cc.selector_steps = args.selector_steps
  c.selector.actions = tuple(action_label(a) for a in args.policy_actions)
  c.selector.cost = args.policy_cost
  c.selector.beta = args.policy_beta
  return c


def ppflow_stages(c) -> list[tuple[str, tuple]]:
  """[(label, model.stages)]: the paper's PPFlow-3, plus PPFlow-2 when PPFlow-3's coarse tokens
  carry more values than the model is wide (see the module docstring); the last entry is the one
  the composed recipe uses."""
  p = int(c.model.patch_size)
  three = ((0.5, (2 * p, 2 * p)), (0.75, (p, 2 * p)), (1.0, (p, p)))
  two = ((0.5, (p, 2 * p)), (1.0, (p, p)))
  info = data_lib.get_info(c.data)

  def fits(stages):
    cfg = c.copy_and_resolve_references()
    cfg.model.stages = stages
    sched = ppflow_lib.schedule_from_config(cfg, info.image_shape)
    return not sched.over_capacity(info.image_shape[-1], int(c.model.hidden_size))
  if fits(three) or not fits(two):
    return [("PPFlow-3", three)]
  return [("PPFlow-3", three), ("PPFlow-2", two)]


def ppflow_note(c) -> str:
  sets = ppflow_stages(c)
  text = "; ".join(f"{label} {tuple((t, tuple(g)) for t, g in stages)}" for label, stages in sets)
  if len(sets) > 1:
    p, ch = int(c.model.patch_size), int(data_lib.get_info(c.data).image_shape[-1])
    text += (f". PPFlow-3's coarse {2 * p}x{2 * p} tokens carry {4 * p * p * ch} pixel values, more than the width "
             f"{c.model.hidden_size}: a velocity target's full-resolution noise part cannot pass (the head's rank is at "
             "most the width), so its coarse stage keeps a loss floor; PPFlow-2 keeps every token within the width and "
             "is the composed recipe's (two levels like the paper's PPF-2, but its coarse tokens are p x 2p, half the tokens, "
             "where the paper's 2p x 2p would be a quarter: those are PPFlow-3's coarse tokens and exceed the width too). "
             "No three-level schedule of this base patch fits this width: its coarsest "
             "level needs 2p x 2p tokens; PPFlow-3 is the opt-in ablation `ppflow3` here and is measured at "
             "64 / 256 / 1,024 tokens in experiments/results/resolution.md")
  return text


def _log(t0):
  return lambda m: print(f"[frontier {time.time() - t0:6.0f}s] {m}", flush=True)


# ---- the base and its snapshot ------------------------------------------------------------------
def base_finished(path: str) -> bool:
  if stage_done(path):
    return True
  done = os.path.join(path, "train_complete.json")
  if not storage.exists(done) or not storage.exists(ckpt.checkpoint_dir(path)):
    return False
  return int(storage.read_json(done)["step"]) >= int(config_of(path).train.steps)


def ensure_base(args, log) -> str:
  """The base workdir, trained (or resumed) through run_stage unless finished or --base_as_is."""
  base = os.path.abspath(args.base or os.path.join(args.work, "base"))
  if base_finished(base):
    log(f"base {base}: finished")
    return base
  if args.base_as_is:
    log(f"base {base}: NOT finished; --base_as_is: using its latest checkpoint as it is")
    return base
  cfg = base_train_config(args)
  log(f"base {base}: training {cfg.train.steps} steps x {cfg.train.batch_size} ({cfg.name})")
  return run_stage(os.path.dirname(base), os.path.basename(base), lambda d: train_stage(cfg, d), log=log)


def check_reused(path: str, want: dict) -> None:
  """A stage kept by --reuse must have been made with this run's settings (its DONE info)."""
  marker = os.path.join(path, "DONE")
  if storage.exists(marker):
    got = storage.read_json(marker)
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
      raise ValueError(f"--reuse: {path} was made with {', '.join(f'{k}={a}' for k, (a, _) in diff.items())}, this "
                       f"run asks {', '.join(f'{k}={b}' for k, (_, b) in diff.items())}; drop --reuse (or use "
                       "another --work) to redo it")


def snapshot(src: str, work: str, name: str, log) -> str:
  """<work>/<name>: a copy of src's latest checkpoint (a DONE stage): arms read this, never `src`."""
  steps = sorted(int(n) for n in storage.listdir(ckpt.checkpoint_dir(src)) if n.isdigit()) if storage.exists(
      ckpt.checkpoint_dir(src)) else []
  if not steps:
    raise ValueError(f"--base {src}: no checkpoint under {ckpt.checkpoint_dir(src)}; train it first or drop "
                     "--base to train one under --work")
  info = {"source": src, "step": steps[-1]}
  check_reused(os.path.join(work, name), info)

  def copy(d):
    shutil.copytree(os.path.join(ckpt.checkpoint_dir(src), str(steps[-1])),
                    os.path.join(ckpt.checkpoint_dir(d), str(steps[-1])))
    log(f"{name}: copied {src} step {steps[-1]}")
  return run_stage(work, name, copy, info, log=log)


# ---- training the arms ----------------------------------------------------------------------------
def ppflow_dir(label: str) -> str:
  return "ppflow" if label == "PPFlow-3" else label.lower().replace("-", "")


def scratch_dir(label: str) -> str:
  return ppflow_dir(label) + "_scratch"


def train_arms(c, dense: str, ft_steps: int, base_steps: int, work: str, ablations, log) -> tuple[dict, dict]:
  """Trains (or resumes) every method from the dense snapshot; returns ({arm: dir}, {arm: (seconds,
  reused)}): seconds of training, reused = made by an earlier invocation (its seconds as recorded in
  its DONE marker then; None if that run did not record them)."""
  dirs, secs = {}, {}

  def once(name, fn):
    info = {"steps": ft_steps}

    def timed(d):
      t = time.time()
      fn(d)
      info["train_seconds"] = round(time.time() - t, 1)      # kept in the DONE marker for --reuse reports
      secs[name] = (info["train_seconds"], False)
      log(f"{name}: trained in {info['train_seconds']:.0f}s")
    check_reused(os.path.join(work, name), {"steps": ft_steps})
    dirs[name] = run_stage(work, name, timed, info, log=log)
    if name not in secs:
      secs[name] = (storage.read_json(os.path.join(dirs[name], "DONE")).get("train_seconds"), True)

  def ppflow(stages):
    def fn(d):
      pc = recipe_lib.ppflow_config(c)
      pc.model.stages = stages
      pc.train.steps = ft_steps
      if not recipe_lib._has_checkpoint(d):
        convert_workdir(dense, pc, d, log=log)
      train_stage(pc, d)
    return fn
  sets = ppflow_stages(c)
  label, stages = sets[-1]
  once(ppflow_dir(label), ppflow(stages))
  if "ppflow3" in ablations and len(sets) > 1:
    once(ppflow_dir(sets[0][0]), ppflow(sets[0][1]))

  def routed(fixed: float):
    def fn(d):
      rc = recipe_lib._base(c, "routed" if fixed <= 0 else "mod", ft_steps, finetune=True)
      rc.objective = "routed_flow_matching"
      rc.routing.fixed_ratio = fixed
      train_stage(rc, d, init_params=None if recipe_lib._has_checkpoint(d) else load_params(dense))
    return fn
  once("routed", routed(0.0))
  if "mod" in ablations:
    once("mod", routed(float(c.routing.target)))

  def grouped(d):
    gc = c.copy_and_resolve_references()
    gc.name = f"{c.name}_grouped"
    n = int(gc.grouped.num_groups)
    gc.grouped.stage1_steps = base_steps
    gc.grouped.stage2_steps = max(1, ft_steps // n)    # each group sees 1/n of the budget
    gc.grouped.stage2_lr = float(c.compose.finetune_lr)
    gc.grouped.stage2_warmup_steps = int(c.compose.finetune_warmup_steps)
    snapshot(dense, d, "stage1", log)                  # the base is stage 1
    run_grouped(gc, d, log=log)
  once("grouped", grouped)

  once("adadiff", lambda d: train_stage(recipe_lib.selector_config(c, dense), d))

  def composed(split: bool):
    def fn(d):
      rc = c.copy_and_resolve_references()
      cc = rc.compose
      cc.ppflow = cc.routing = cc.grouped = cc.selector = True
      cc.dense_steps = base_steps
      if split:      # one fine-tuning budget over the three fine-tunes (the #17 protocol)
        cc.ppflow_steps = cc.routing_steps = max(1, ft_steps // 3)
        cc.grouped_steps = max(1, ft_steps - 2 * (ft_steps // 3))
      snapshot(dense, d, "dense", log)                 # the recipe's dense stage is the base
      if not split and not stage_done(os.path.join(d, "ppflow")):
        # The recipe's PPFlow stage (ppflow_config, compose.stages, ft_steps from the base) is the PPFlow
        # arm's very computation: reuse it, so the composed model has each ingredient's full budget.
        shutil.copytree(dirs[ppflow_dir(label)], os.path.join(d, "ppflow"), dirs_exist_ok=True)
        log(f"composed: PPFlow stage = the {label} arm ({dirs[ppflow_dir(label)]})")
      recipe_lib.run_recipe(rc, d, log=log)
    return fn
  once("composed", composed(split=False))
  if "composed_split" in ablations:
    once("composed_split", composed(split=True))

  if "scratch" in ablations:
    def scratch(d):
      # PPFlow's paper also trains its model from scratch: same stages, the base's recipe (lr schedule,
      # batch), the whole budget of a fine-tuned arm (base + fine-tune images); no dense checkpoint.
      sc = recipe_lib._base(c, scratch_dir(label), base_steps + ft_steps, finetune=False)
      sc.objective = "ppflow"
      sc.model.stages = stages
      sc.sample.cfg_scales = c.sample.cfg_scales
      train_stage(sc, d)
    once(scratch_dir(label), scratch)
  return dirs, secs


# ---- arms: a sampler at one setting ----------------------------------------------------------------
class Arm:
  """One sampler setting. A grid arm samples (method, steps) with generate_images' keys (the same
  labels and noise as every other grid arm: `pair` names the arm its paired FD difference is taken
  against); a policy arm (steps None) samples the policy's noise with the policy's actions, or with
  `assign(n)` -> [n] action indices (a baseline on the same noise)."""

  def __init__(self, name, kind, sampler, method=None, steps=None, images=0, source="", pair=None, assign=None,
               variant="", repeat_of=None):
    self.name, self.kind, self.sampler, self.method, self.steps = name, kind, sampler, method, steps
    self.images, self.source, self.pair, self.assign = images, source, pair, assign
    self.variant, self.repeat_of = variant, repeat_of    # variant: "" or a non-default sampler rule
    self.first_call = None
    self.times = []
    self.res = {}
    self.chosen = None          # a policy arm's actions per image [num_eval]

  @property
  def policy(self) -> bool:
    return self.steps is None

  def sample(self, labels, key, batch):
    """labels [n] -> (images [n, H, W, C], actions [n] or None)."""
    if self.policy:
      out = self.sampler.sample(key, labels, batch_size=batch,
                                actions=None if self.assign is None else self.assign(len(labels)))
      return out["images"], np.asarray(out["actions"])
    out = self.sampler.sample(key, labels, steps=self.steps, method=self.method, batch_size=batch)
    return out["images"], None

  def cost(self, actions) -> tuple[float, float]:
    """(NFE, FLOPs) per image: network evaluations without the CFG doubling, analytic FLOPs."""
    if self.policy:
      acts = self.sampler.selector.actions
      nfe = np.mean([self.sampler.generator.network_evaluations(acts[a][1], acts[a][0]) for a in actions])
      return float(nfe), self.sampler.flops_per_image(actions)
    return (float(self.sampler.generator.network_evaluations(self.steps, self.method)),
            self.sampler.flops_per_image(steps=self.steps, method=self.method))


def sampler_of(workdir: str, info, **sample_overrides):
  return with_sample(ComposedSampler(composed_config(config_of(workdir)), info, load_params(workdir)),
                     **sample_overrides)


def with_sample(sampler, **overrides):
  """The same model with other `config.sample` settings (edges, multistep_history)."""
  if not overrides:
    return sampler
  c = sampler.config.copy_and_resolve_references()
  for k, v in overrides.items():
    c.sample[k] = v
  return ComposedSampler(c, sampler.info, sampler.params, sampler.policy_params)


def point_name(kind: str, point, variant: str = "") -> str:
  return f"{kind} {point[0]} {point[1]}" + (f" ({variant})" if variant else "")


def build_arms(c, dense: str, dirs: dict, args, info, base_images: int, ft_images: int) -> list[Arm]:
  """Grid arms of dense and every method, the edge / history variants, two repeated dense points
  (the timing spread) and the two policies (their baselines join after they are measured)."""
  arms = []

  def grid(kind, smp, images, source, points):
    for p in points:
      arms.append(Arm(point_name(kind, p), kind, smp, p[0], p[1], images, source,
                      pair=None if kind == DENSE else point_name(DENSE, p)))

  dense_s = sampler_of(dense, info)
  grid(DENSE, dense_s, base_images, dense, args.grid)
  label = ppflow_stages(c)[-1][0]
  g_gen, g_params, _ = load_grouped(dirs["grouped"], merged_config(
      storage.read_json(os.path.join(dirs["grouped"], "config.json"))))   # the pipeline's config (its groups)
  gcfg, _, gparams, _ = recipe_lib.load_composed(dirs["composed"], selector=False)
  models = {label: (sampler_of(dirs[ppflow_dir(label)], info), dirs[ppflow_dir(label)]),
            ROUTED: (sampler_of(dirs["routed"], info), dirs["routed"]),
            PRUNE: (ComposedSampler(g_gen.config, info, g_params), dirs["grouped"]),
            COMPOSED: (ComposedSampler(gcfg, info, gparams), dirs["composed"])}
  for kind, (smp, src) in models.items():
    grid(kind, smp, base_images + ft_images, src, args.grid)
  # The old rules beside the defaults, paired with them (same model, noise, labels).
  for kind, rule, smp_kinds in (("edges", dict(edges="insert"), (PRUNE, COMPOSED)),
                                ("history", dict(multistep_history="restart"), (label, PRUNE, COMPOSED))):
    for k in smp_kinds:
      smp, src = models[k]
      variant = "insert edges" if kind == "edges" else "AB2 restarts at edges"
      for s in args.edge_steps:
        p = ("ab2", s)
        arms.append(Arm(point_name(k, p, variant), k, with_sample(smp, **rule), "ab2", s, base_images + ft_images,
                        src, pair=point_name(k, p), variant=variant))
  ablation = {}
  if "ppflow3" in args.ablations and "PPFlow-3" != label:
    ablation["PPFlow-3"] = (sampler_of(dirs["ppflow"], info), dirs["ppflow"], ft_images)
  if "mod" in args.ablations:
    ablation[f"MoD fixed ratio {c.routing.target}"] = (sampler_of(dirs["mod"], info), dirs["mod"], ft_images)
  if "scratch" in args.ablations:
    d = dirs[scratch_dir(label)]
    ablation[f"{label} from scratch"] = (sampler_of(d, info), d, ft_images)
  if "composed_split" in args.ablations:
    scfg, _, sparams, _ = recipe_lib.load_composed(dirs["composed_split"], selector=False)
    ablation["composed (one budget split over 3)"] = (ComposedSampler(scfg, info, sparams), dirs["composed_split"],
                                                      ft_images // 3 * 3)
  for kind, (smp, src, ft) in ablation.items():
    grid(kind, smp, base_images + ft, src, args.ablation_grid)
  # Two dense points timed again as separate arms: how far apart two timings of the SAME program land.
  for p in (args.grid[0], args.grid[-1]):
    a = Arm(point_name(DENSE, p) + " (timed again)", "timing repeat", dense_s, p[0], p[1], base_images, dense,
            repeat_of=point_name(DENSE, p))
    arms.append(a)
  sc = composed_config(config_of(dense))
  sc.compose.selector = True
  sc.selector = c.selector
  arms.append(Arm(ADADIFF, ADADIFF, ComposedSampler(sc, info, load_params(dense),
                                                    load_params(dirs["adadiff"], ema=False)),
                  images=base_images, source=dirs["adadiff"]))
  cfg, _, params, policy = recipe_lib.load_composed(dirs["composed"])
  arms.append(Arm(COMPOSED_POLICY, COMPOSED_POLICY, ComposedSampler(cfg, info, params, policy),
                  images=base_images + ft_images, source=dirs["composed"]))
  return arms


def policy_baselines(policy: Arm, arms: list[Arm], args) -> list[Arm]:
  """A measured policy arm's baselines on its own noise: the best fixed action of its set (the one
  with the lowest FD among the grid arms of its model that cost at most its mean NFE; else its
  cheapest) and a random assignment with its action mix (its choices, shuffled)."""
  model = DENSE if policy.kind == ADADIFF else COMPOSED
  acts = list(policy.sampler.selector.actions)
  own = [a for a in arms if a.kind == model and not a.variant and (a.method, a.steps) in acts]
  cheap = [a for a in own if a.res["nfe"] <= policy.res["nfe"] + 1e-9]
  best = min(cheap, key=lambda a: a.res["fd"]) if cheap else min(own, key=lambda a: a.res["nfe"])
  index = acts.index((best.method, best.steps))
  chosen = policy.chosen

  def shuffled(n):
    return np.random.default_rng(7).permutation(chosen)[:n]
  return [Arm(f"{policy.name}: best fixed action {action_label(acts[index])}", policy.kind + " baseline",
              policy.sampler, images=policy.images, source=policy.source, pair=policy.name,
              assign=lambda n: np.full(n, index, np.int32)),
          Arm(f"{policy.name}: random, same action mix", policy.kind + " baseline", policy.sampler,
              images=policy.images, source=policy.source, pair=policy.name, assign=shuffled)]


# ---- measuring: quality (cached per arm), timing one model at a time, shared bootstrap rows ------------
def features(classifier, images) -> tuple[np.ndarray, np.ndarray]:
  """images [N, H, W, C] -> (features [N, F] float64, predicted classes [N]); as adaflow.eval.quality."""
  f, p = [], []
  images = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  for a in range(0, len(images), 2048):
    ff, logits = classifier.features_and_logits(images[a:a + 2048])
    f.append(np.asarray(ff, np.float64))
    p.append(np.argmax(np.asarray(logits), -1))
  return np.concatenate(f), np.concatenate(p)


def quality_key(a, args) -> str:
  """What an arm's quality measurement depends on: the settings and its stage's DONE marker (which
  records when and how long it trained, so a retrained stage never reuses old samples)."""
  marker = os.path.join(a.source, "DONE")
  done = storage.read_json(marker) if a.source and storage.exists(marker) else None
  return json.dumps({"arm": a.name, "num_eval": args.num_eval, "batch": args.batch, "protocol": 25,
                     "stage": a.source, "done": done}, sort_keys=True)


def _cache_base(a, cache_dir: str) -> str:
  return os.path.join(cache_dir, a.name.replace(" ", "_").replace("/", "_").replace(":", "_"))


def cached_quality(a, args, cache_dir: str) -> bool:
  """Loads an arm's quality measurement (features, chosen actions, results) saved by an interrupted
  run with the same key; True if it did."""
  base = _cache_base(a, cache_dir)
  if not (os.path.exists(base + ".json") and os.path.exists(base + ".npz")):
    return False
  meta = storage.read_json(base + ".json")
  if meta.get("key") != quality_key(a, args):
    return False
  with np.load(base + ".npz", allow_pickle=False) as z:
    a.feats = z["feats"]
    a.chosen = z["actions"] if "actions" in z.files else None
  a.res.update(meta["res"])
  return True


def save_quality(a, args, cache_dir: str) -> None:
  os.makedirs(cache_dir, exist_ok=True)
  base = _cache_base(a, cache_dir)
  extra = {} if a.chosen is None else {"actions": a.chosen}
  np.savez(base + ".npz", feats=a.feats, **extra)
  storage.write_json(base + ".json", {"key": quality_key(a, args), "res": a.res})


def measure_quality(a, classifier, labels, time_labels, key, args, log, cache_dir: str) -> None:
  if cache_dir and cached_quality(a, args, cache_dir):
    log(f"{a.name}: quality measured by an earlier run (FD {a.res['fd']:.3f}); reusing it")
    return
  t = time.perf_counter()
  a.sample(time_labels, jax.random.PRNGKey(99), args.batch)      # compiles this setting
  a.first_call = time.perf_counter() - t
  imgs, chosen = a.sample(labels, key, args.batch)
  a.feats, preds = features(classifier, imgs)
  a.chosen = chosen
  nfe, flops = a.cost(chosen)
  a.res.update(acc=float(np.mean(preds == labels)), nfe=nfe, gflops=flops / 1e9)
  if chosen is not None:
    acts = a.sampler.selector.actions
    a.res["histogram"] = {action_label(acts[i]): float(np.mean(chosen == i)) for i in range(len(acts))}
  a.res["fd"] = float(a.ref(*feature_statistics(a.feats)))
  log(f"{a.name}: FD {a.res['fd']:.3f}, acc {a.res['acc']:.3f}, NFE {nfe:.2f}, {a.res['gflops']:.3f} GFLOPs")
  if cache_dir:
    save_quality(a, args, cache_dir)


REPEAT_BLOCK = "timing repeat"


def timing_block(a) -> str:
  """The arms compiled and timed together: one model's (its workdir's) arms with their sampler
  variants and policy baselines; the repeated dense points form a block of their own, timed last, so
  their spread against the first timing of the same program includes the drift over the whole run."""
  return REPEAT_BLOCK if a.repeat_of is not None else a.source


def timing_blocks(arms) -> list[list[Arm]]:
  """The arms cut into `timing_block`s in the order their models first appear; the repeats last."""
  blocks: dict[str, list[Arm]] = {}
  for a in arms:
    blocks.setdefault(timing_block(a), []).append(a)
  blocks[REPEAT_BLOCK] = blocks.pop(REPEAT_BLOCK, [])
  return [b for b in blocks.values() if b]


def time_block(block, time_labels, args, log) -> None:
  """Steady-state timing of one block's arms: `--reps` calls each, interleaved over the block (load
  changes hit its arms alike), after a first call where the quality came from the cache."""
  for a in block:
    if a.first_call is None:     # quality came from the cache (or a repeat): compile this setting before timing
      t = time.perf_counter()
      a.sample(time_labels, jax.random.PRNGKey(99), args.batch)
      a.first_call = time.perf_counter() - t
  for r in range(args.reps):
    log(f"timing repetition {r + 1}/{args.reps} of {len(block)} arms ({block[0].kind})")
    for a in block:
      t = time.perf_counter()
      a.sample(time_labels, jax.random.PRNGKey(99), args.batch)
      a.times.append(time.perf_counter() - t)
  for a in block:
    steady = float(np.median(a.times))
    a.res["ms"] = 1000 * steady / args.batch
    a.res["compile_s"] = max(0.0, a.first_call - steady)


def measure(arms, classifier, args, info, log, cache_dir: str = "") -> list[Arm]:
  """Quality of every arm (cached per arm in `cache_dir` when given, so an interrupted run resumes),
  each policy's baselines after it, and timing, one block of arms (`timing_block`) at a time: every
  XLA:CPU program takes memory mappings, and the ~80 programs of all arms compiled at once exceeded
  the kernel's default vm.max_map_count (65,530: exit 139 at measurement), so each block's programs
  are dropped (jax.clear_caches) before the next compiles. Then every arm's FD on the shared
  bootstrap rows. Returns the arms with the baselines."""
  labels = balanced_labels(args.num_eval, info.num_classes)
  time_labels = balanced_labels(args.batch, info.num_classes)
  ref = ReferenceFD(*classifier.reference_stats)
  key = jax.random.PRNGKey(1234)
  out = []
  for block in timing_blocks(arms):
    done = []
    for a in block:
      a.ref = ref
      done.append(a)
      if a.repeat_of is not None:
        continue
      measure_quality(a, classifier, labels, time_labels, key, args, log, cache_dir)
      if a.policy and a.assign is None:
        for b in policy_baselines(a, out + done, args):
          b.ref = ref
          measure_quality(b, classifier, labels, time_labels, key, args, log, cache_dir)
          done.append(b)
    time_block(done, time_labels, args, log)
    out.extend(done)
    jax.clear_caches()       # this block's programs (and their mappings) go before the next block compiles
    gc.collect()
  by_name = {a.name: a for a in out}
  idx = resample_indices(args.num_eval, args.resamples, seed=0)    # the same rows for every arm
  for a in out:
    if a.repeat_of is not None:
      continue
    a.boot = resampled_fds(a.feats, ref, idx)
    iv = interval_from_resamples(a.res["fd"], a.boot, lower_bound=0.0)
    a.res.update(fd_low=iv.low, fd_high=iv.high)
  for a in out:
    if a.repeat_of is not None:
      src = by_name[a.repeat_of]
      a.res.update({k: v for k, v in src.res.items() if k not in ("ms", "compile_s")})
      a.boot = src.boot
  for a in out:
    if a.pair is not None and a.pair in by_name:
      b = by_name[a.pair]
      d = interval_from_resamples(a.res["fd"] - b.res["fd"], a.boot - b.boot)
      a.res.update(diff=d.value, diff_low=d.low, diff_high=d.high)
  return out


def real_reference_fd(classifier, data_config, args, seed: int):
  """FD [95% CI] of `--num_eval` real images (seed != the classifier's) against the reference
  statistics, bootstrapped like an arm: the score of a generator that samples the data exactly."""
  images, _ = data_lib.load_arrays(data_config, num=args.num_eval, seed=seed)
  feats, _ = features(classifier, images)
  return fd_interval(feats, ReferenceFD(*classifier.reference_stats), num_resamples=args.resamples)


# ---- the command line: flags -> base -> arms -> measurements -> report ---------------------------------
def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m experiments.frontier", description=__doc__.split("\n\n")[0])
  ap.add_argument("--work", default="/tmp/adaflow_frontier", help="stage directories of this benchmark")
  ap.add_argument("--base", default="", help="dense base workdir (default <work>/base; trained if not finished)")
  ap.add_argument("--base_as_is", action="store_true",
                  help="use the base's latest checkpoint even if its training has not finished (never trains it)")
  ap.add_argument("--out", default=os.path.join(RESULTS, "frontier.md"))
  ap.add_argument("--cache", default="/tmp/.adaflow_cache", help="evaluation classifier cache")
  ap.add_argument("--compile_cache", default=None,
                  help="JAX persistent compilation cache (default <cache>/xla; '' = off): reruns skip compiling")
  ap.add_argument("--reuse", action="store_true", help="keep finished stages in --work (default: start fresh)")
  ap.add_argument("--smoke", action="store_true", help="tiny budgets: checks the pipeline, numbers mean nothing")
  ap.add_argument("--ft_fraction", type=float, default=0.1, help="fine-tuning images / base training images, per method")
  ap.add_argument("--grid", default="euler:2,euler:3,euler:4,euler:6,euler:8,euler:16,"
                  "ab2:3,ab2:4,ab2:6,ab2:8,ab2:12,ab2:16,heun:8",
                  help="solver:steps points every model (dense and each method) is sampled at")
  ap.add_argument("--policy_actions", default="euler:2,euler:3,euler:4,ab2:4,ab2:6,ab2:8,ab2:12,ab2:16",
                  help="the step policies' actions (solver:steps, each in --grid)")
  ap.add_argument("--policy_cost", default="nfe", help="the policies' cost: nfe, flops or steps")
  ap.add_argument("--policy_beta", type=float, default=0.3, help="reward = quality - beta * cost / max cost")
  ap.add_argument("--edge_steps", default="4,8", help="AB2 steps of the edge-rule and history checks ('' = none)")
  ap.add_argument("--fd_levels", default="0.3,0.5,1.0", help="FD levels of the frontier speed-up table")
  ap.add_argument("--ablations", default="", help=f"opt-in arms: a comma-separated subset of {','.join(ABLATIONS)}, or all")
  ap.add_argument("--ablation_grid", default="euler:4,ab2:8,heun:8", help="points the ablation arms are sampled at")
  ap.add_argument("--selector_steps", type=int, default=100, help="policy training steps (32 labels each)")
  ap.add_argument("--num_eval", type=int, default=1000, help="samples per arm")
  ap.add_argument("--batch", type=int, default=100, help="images per sampling call (quality and timing)")
  ap.add_argument("--reps", type=int, default=5, help="timed calls per arm (interleaved)")
  ap.add_argument("--resamples", type=int, default=200, help="bootstrap resamples, shared by every arm")
  return ap


def main(argv=None):
  ap = build_parser()
  args = ap.parse_args(argv)
  argv_text = list(sys.argv[1:] if argv is None else argv)
  if args.smoke:
    for flag, value in SMOKE_FLAGS.items():
      setattr(args, flag, value)
    if args.out == ap.get_default("out"):
      args.out = os.path.join(args.work, "frontier_smoke.md")    # smoke numbers stay out of results/
  validate_args(args)
  # Compiling dominates the smoke run and a rerun's stages; the timed steady-state calls are unaffected.
  enable_compilation_cache(os.path.join(args.cache, "xla") if args.compile_cache is None else args.compile_cache)
  machine, date = machine_line(), utc_now()
  t0 = time.time()
  log = _log(t0)
  base_dir = os.path.abspath(args.base or os.path.join(args.work, "base"))
  if not args.reuse and os.path.exists(args.work):
    for n in os.listdir(args.work):           # fresh stages, but never the base
      p = os.path.join(args.work, n)
      if os.path.abspath(p) != base_dir and os.path.isdir(p):
        shutil.rmtree(p)
  os.makedirs(args.work, exist_ok=True)

  base = ensure_base(args, log)
  dense = snapshot(base, args.work, "dense", log)
  bcfg = config_of(dense)
  _, base_step = ckpt.restore_meta(dense)
  bs = int(bcfg.train.batch_size)
  base_images = base_step * bs
  ft_images = int(args.ft_fraction * base_images)
  ft_steps = max(1, ft_images // bs)
  c = method_config(bcfg, args, ft_steps)
  info = data_lib.get_info(c.data)
  dirs, secs = train_arms(c, dense, ft_steps, base_step, args.work, args.ablations, log)

  classifier = get_classifier(c.data, args.cache, seed=int(c.eval.classifier_seed), log=log,
                              steps=int(c.eval.classifier_steps))
  floor = real_vs_real_fd(classifier, c.data, args.num_eval)
  log(f"real-vs-real FD floor ({args.num_eval} vs {args.num_eval}): {floor:.3f}")
  floor_ref = real_reference_fd(classifier, c.data, args, seed=int(c.eval.classifier_seed) + 1000)
  log(f"real-vs-reference FD floor ({args.num_eval} real images): {floor_ref}")
  arms = build_arms(c, dense, dirs, args, info, base_images, ft_steps * bs)
  arms = measure(arms, classifier, args, info, log, cache_dir=os.path.join(args.work, "quality"))

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  png = os.path.splitext(args.out)[0] + ".png"
  plot(arms, floor, floor_ref, png)
  m = bcfg.model
  ctx = dict(date=date, machine=machine, flags=matmul_flags(), argv=argv_text, total_s=time.time() - t0, base=base,
             base_step=base_step, batch=bs, base_images=base_images, ft_images=ft_steps * bs, ft_steps=ft_steps,
             cfg=float(bcfg.sample.cfg_scale), ppflow=ppflow_note(c),
             model=f"{bcfg.name}: {bcfg.data.name} {bcfg.data.image_size}x{bcfg.data.image_size}, DiT width "
                   f"{m.hidden_size} depth {m.depth} patch {m.patch_size}",
             sel=f"{c.compose.selector_steps} steps x {c.compose.selector_batch} labels, actions "
                 f"{', '.join(c.selector.actions)}, cost {c.selector.cost}, beta {c.selector.beta}, inputs: class "
                 f"embedding + noise statistics, reward {c.selector.quality}")
  text = report(args, ctx, arms, floor, floor_ref, secs, args.out, png)
  print(text)
  with open(os.path.join(args.work, "frontier.json"), "w") as f:
    json.dump({a.name: dict(a.res, times=a.times, images=a.images) for a in arms}, f, indent=1)
  log(f"wrote {args.out} and {png}; done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  main()
