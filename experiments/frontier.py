"""Less compute at equal quality, with error bars (issue #17): the dense frontier and every method
fine-tuned from one dense checkpoint, on the crops 32x32 testbed.

    flock /tmp/adaflow-bench.lock python experiments/frontier.py --base /work/testbed/dense --reuse
    python experiments/frontier.py --smoke --work /tmp/frontier_smoke     # minutes; numbers meaningless

Protocol (the papers': every method starts from a trained dense model and adds a fraction of its
training images):

  base        a dense DiT trained once with configs/testbed_crops32.py (`--base`, default <work>/base;
              trained through run_stage when it has not finished); a copy of its latest checkpoint
              (<work>/dense) is what every arm starts from, so a base still training cannot change
              under the benchmark.
  dense       the frontier: steps x solvers (`--steps`, `--solvers`: Euler, Heun, AB2 multistep).
  PPFlow-3    convert-stages from the base (arXiv 2506.23543) + fine-tune: 2p x 2p patches for
              t <= 0.5, p x 2p up to 0.75, then p x p (the paper's three levels).
  PPFlow-2    only when PPFlow-3's coarse tokens carry more pixel values than the model is wide
              (2p * 2p * C > hidden_size, adaflow.models.ppflow.PatchSchedule.over_capacity: a
              velocity target's full-resolution noise part cannot pass such a token, so that stage
              keeps a loss floor): p x 2p for t <= 0.5, then p x p. The composed recipe then uses it.
  DiffCR      routing fine-tune with learned per-(layer, region) ratios (arXiv 2412.16822),
              routing.scale = "weight" (the router weight scales the MLP update, as its pseudocode).
  MoD fixed   the same router at one fixed ratio = the DiffCR target (Mixture-of-Depths,
              arXiv 2404.02258: top-k tokens, MLP update scaled by the router weight).
  prune       train-then-prune (arXiv 2312.13307) with the base as stage 1: pruning search +
              stage 2 (each group's fine-tune).
  AdaDiff     a step policy (arXiv 2311.14768) over the frozen base (no training images; its
              reward classifier is selector.classifier_seed, never the evaluation's).
  composed    adaflow.pipelines.recipe from the base: PPFlow -> routing -> grouped -> policy.
  scratch     the composed recipe's PPFlow stages trained from random weights with the base's recipe
              for the whole budget of a fine-tuned arm (base + fine-tune images): PPFlow's paper
              reports training from scratch beside converting a pretrained DiT.

Fine-tuning budget: `--ft_fraction` (0.2) of the base's training images (its checkpoint step x
batch) per method; the composed recipe splits it over its three fine-tunes; train-then-prune over
its groups.

Measured in one run, with the same labels and noise for every arm (batches of `--batch`, key
fold_in(eval key, i)): FD of `--num_eval` class-balanced samples against the evaluation
classifier's reference statistics (classifier features, not Inception) with a bootstrap 95%
interval (adaflow.eval.bootstrap); for each method the paired FD difference to dense at the same
steps and solver (same bootstrap rows for both); class accuracy; analytic FLOPs per image
(adaflow.compose.flops); ms/image steady-state (median of `--reps` interleaved calls of `--batch`
images, after a first call whose excess time is reported as compile time: near 0 when the persistent
compilation cache, `--compile_cache`, already held the program); NFE (network
evaluations per image, without the CFG doubling). Beside them two floors: real-vs-real (two disjoint
sets of `--num_eval` real images) and real-vs-reference (`--num_eval` real images, drawn with another
seed than the classifier's, scored against the same reference statistics and bootstrap as every arm:
what a generator that samples the data distribution exactly would score under this protocol).

Resumable: every stage keeps a DONE marker (with its training seconds) and every arm's quality
measurement (features, FD, steps) is kept in <work>/quality keyed by the settings and its stage's
marker, so `--reuse` after an interruption redoes only what is missing (timing always reruns, all
arms interleaved).

Writes `--out` (default experiments/results/frontier.md; with --smoke <work>/frontier_smoke.md) and
the plot next to it (.png).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from adaflow import data as data_lib  # noqa: E402
from adaflow import flow  # noqa: E402
from adaflow import storage  # noqa: E402
from adaflow.compose.generator import composed_config  # noqa: E402
from adaflow.compose.sampler import ComposedSampler  # noqa: E402
from adaflow.config_defaults import load_config_file, merged_config  # noqa: E402
from adaflow.eval import fd_difference_interval, fd_interval, get_classifier, real_vs_real_fd  # noqa: E402
from adaflow.eval.bootstrap import ReferenceFD  # noqa: E402
from adaflow.eval.generate import balanced_labels  # noqa: E402
from adaflow.models import ppflow as ppflow_lib  # noqa: E402
from adaflow.pipelines import recipe as recipe_lib  # noqa: E402
from adaflow.pipelines.convert_stages import convert_workdir  # noqa: E402
from adaflow.pipelines.grouped import load_grouped, run_grouped  # noqa: E402
from adaflow.pipelines.stages import run_stage, stage_done  # noqa: E402
from adaflow.train import checkpoint as ckpt  # noqa: E402
from adaflow.train.diagnostics import enable_compilation_cache  # noqa: E402
from adaflow.train.loop import config_of, load_params, train  # noqa: E402
from experiments.common import machine_line, utc_now  # noqa: E402

TESTBED = os.path.join(ROOT, "configs", "testbed_crops32.py")
SOLVERS = ("euler", "heun", "ab2")
GOAL_KINDS = ("PPFlow-3", "PPFlow-2", "DiffCR (learned ratios)", "train-then-prune")
# --smoke: a pipeline check in minutes on 2 CPU cores (smaller DiT, tiny budgets); numbers mean nothing.
SMOKE = dict(base_steps=30, batch=16, depth=2, hidden=64, heads=2, num_eval=64, batch_eval=32, reps=2,
             steps="2,4", method_steps="2,4", selector_steps=2, selector_batch=8, groups=2)


# ---- configuration ----------------------------------------------------------------------------
def parse_ints(text: str, flag: str) -> tuple[int, ...]:
  try:
    v = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"{flag}: comma-separated positive integers such as 2,4,8, got {text!r}") from None
  if not v or any(x < 1 for x in v):
    raise ValueError(f"{flag}: comma-separated positive integers such as 2,4,8, got {text!r}")
  return tuple(sorted(set(v)))


def validate_args(args) -> None:
  """Every impossible setting fails here, before anything trains or compiles."""
  args.steps = parse_ints(args.steps, "--steps")
  args.method_steps = parse_ints(args.method_steps, "--method_steps")
  args.solvers = tuple(s.strip() for s in args.solvers.split(",") if s.strip())
  bad = [s for s in args.solvers if s not in SOLVERS]
  if bad or not args.solvers:
    raise ValueError(f"--solvers: a comma-separated subset of {','.join(SOLVERS)}, got {bad or args.solvers}")
  if args.method_solver not in args.solvers:
    raise ValueError(f"--method_solver {args.method_solver!r}: must be one of --solvers {args.solvers} (the "
                     "equal-steps comparison needs dense at the same solver)")
  missing = [s for s in args.method_steps if s not in args.steps]
  if missing:
    raise ValueError(f"--method_steps {missing} not in --steps {args.steps}: the equal-steps comparison needs "
                     "dense at those steps; add them to --steps")
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


def base_train_config(args):
  """The dense base's training config: the testbed (smaller and shorter under --smoke)."""
  c = load_config_file(TESTBED)
  c.eval.cache_dir = args.cache
  if args.smoke:
    s = SMOKE
    c.train.steps, c.train.batch_size, c.train.warmup_steps = s["base_steps"], s["batch"], 5
    c.train.ckpt_every, c.train.log_every = s["base_steps"], 10
    c.model.depth, c.model.hidden_size, c.model.num_heads = s["depth"], s["hidden"], s["heads"]
    c.train.final_samples = False
  return c


def method_config(base, args, ft_steps: int):
  """The base's own config (model, data, sampling) with every method's settings for this benchmark."""
  c = base.copy_and_resolve_references()
  c.eval.cache_dir = args.cache
  c.eval.at_end = False
  c.train.final_samples = False
  c.train.sample_every = 0
  cc = c.compose
  cc.stages = ppflow_stages(c)[-1][1]    # the composed recipe's: the coarsest that fits the width
  cc.finetune_lr = 3e-4
  cc.ppflow_steps = cc.routing_steps = cc.grouped_steps = ft_steps
  cc.finetune_warmup_steps = min(20, max(1, ft_steps // 10))
  c.routing.bins = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
  c.routing.num_regions = 4
  c.routing.target = 0.6
  c.routing.ratio_loss_weight = 0.3
  c.routing.ratio_lr_scale = 10.0   # ratios move within a short fine-tune (see adaflow.models.routing)
  c.routing.scale = "weight"
  c.grouped.num_groups = SMOKE["groups"] if args.smoke else 4
  c.grouped.k = 0.5
  c.grouped.largest = "data"
  c.selector.step_set = tuple(args.method_steps) if args.smoke else (4, 8, 16, 32)
  c.selector.beta = 0.5
  cc.selector_steps = SMOKE["selector_steps"] if args.smoke else args.selector_steps
  cc.selector_batch = SMOKE["selector_batch"] if args.smoke else 32
  if args.smoke:
    c.selector.quality = "closeness"   # saves training a second (reward) classifier in the smoke run
    c.grouped.rounds, c.grouped.proposals_per_round = 1, 1
    c.grouped.proxy_samples, c.grouped.importance_batches = 16, 1
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
             "is the composed recipe's")
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
  return run_stage(os.path.dirname(base), os.path.basename(base), lambda d: train(cfg, d), log=log)


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


def train_arms(c, dense: str, ft_steps: int, base_steps: int, work: str, log) -> tuple[dict, dict]:
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
      train(pc, d)
    return fn
  for label, stages in ppflow_stages(c):
    once(ppflow_dir(label), ppflow(stages))

  def routed(fixed: float):
    def fn(d):
      rc = recipe_lib._base(c, "routed" if fixed <= 0 else "mod", ft_steps, finetune=True)
      rc.objective = "routed_flow_matching"
      rc.routing.fixed_ratio = fixed
      train(rc, d, init_params=None if recipe_lib._has_checkpoint(d) else load_params(dense))
    return fn
  once("routed", routed(0.0))
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

  once("adadiff", lambda d: train(recipe_lib.selector_config(c, dense), d))

  label, stages = ppflow_stages(c)[-1]

  def scratch(d):
    # PPFlow's paper also trains its model from scratch: same stages, the base's recipe (lr schedule,
    # batch), the whole budget of a fine-tuned arm (base + fine-tune images); no dense checkpoint.
    sc = recipe_lib._base(c, scratch_dir(label), base_steps + ft_steps, finetune=False)
    sc.objective = "ppflow"
    sc.model.stages = stages
    sc.sample.cfg_scales = c.sample.cfg_scales
    train(sc, d)
  once(scratch_dir(label), scratch)

  def composed(d):
    rc = c.copy_and_resolve_references()
    cc = rc.compose
    cc.ppflow = cc.routing = cc.grouped = cc.selector = True
    cc.dense_steps = base_steps
    cc.ppflow_steps = cc.routing_steps = max(1, ft_steps // 3)
    cc.grouped_steps = max(1, ft_steps - 2 * (ft_steps // 3))
    snapshot(dense, d, "dense", log)                   # the recipe's dense stage is the base
    recipe_lib.run_recipe(rc, d, log=log)
  once("composed", composed)
  return dirs, secs


# ---- arms: a sampler at one setting ----------------------------------------------------------------
class Arm:
  def __init__(self, name, kind, sampler, steps, method, images, paired=True, source=""):
    self.name, self.kind, self.sampler, self.steps, self.method = name, kind, sampler, steps, method
    self.images, self.paired, self.source = images, paired, source   # source: the stage dir it samples
    self.first_call = None
    self.times = []
    self.res = {}

  def sample(self, labels, key, batch):
    out = self.sampler.sample(key, labels, steps=self.steps, method=self.method, batch_size=batch)
    return out["images"], np.asarray(out["steps"])

  def nfe(self, steps_per_image) -> float:
    """Network evaluations per image (no CFG doubling), edges of stages / groups / regions included."""
    method = self.method or self.sampler.selector.method
    per = 2 if method == "heun" else 1

    def one(s):
      return per * sum(len(sub) - 1 for _, _, sub in self.sampler.generator.segments(flow.time_grid(int(s))))
    counts = dict(zip(*np.unique(steps_per_image, return_counts=True)))
    return float(sum(c * one(s) for s, c in counts.items()) / len(steps_per_image))


def sampler_of(workdir: str, info):
  return ComposedSampler(composed_config(config_of(workdir)), info, load_params(workdir))


def build_arms(c, dense: str, dirs: dict, args, info, base_images: int, ft_images: int) -> list[Arm]:
  arms = []
  dense_s = sampler_of(dense, info)
  for m in args.solvers:
    for s in args.steps:
      arms.append(Arm(f"dense {m} {s}", "dense", dense_s, s, m, base_images, source=dense))
  # the pipeline's own config (its group count), not stage 1's (the base's)
  g_gen, g_params, _ = load_grouped(dirs["grouped"], merged_config(
      storage.read_json(os.path.join(dirs["grouped"], "config.json"))))
  methods = [(label, sampler_of(dirs[ppflow_dir(label)], info), dirs[ppflow_dir(label)])
             for label, _ in ppflow_stages(c)]
  methods += [("DiffCR (learned ratios)", sampler_of(dirs["routed"], info), dirs["routed"]),
              (f"MoD fixed ratio {c.routing.target}", sampler_of(dirs["mod"], info), dirs["mod"]),
              ("train-then-prune", ComposedSampler(g_gen.config, info, g_params), dirs["grouped"])]
  label = ppflow_stages(c)[-1][0]
  methods.append((f"{label} from scratch", sampler_of(dirs[scratch_dir(label)], info), dirs[scratch_dir(label)]))
  gcfg, _, gparams, _ = recipe_lib.load_composed(dirs["composed"], selector=False)
  methods.append(("composed (no policy)", ComposedSampler(gcfg, info, gparams), dirs["composed"]))
  for name, smp, src in methods:
    for s in args.method_steps:
      arms.append(Arm(f"{name} {args.method_solver} {s}", name, smp, s, args.method_solver, base_images + ft_images,
                      source=src))
  sc = composed_config(config_of(dense))
  sc.compose.selector = True
  sc.selector = c.selector
  arms.append(Arm("AdaDiff policy", "AdaDiff", ComposedSampler(sc, info, load_params(dense),
                                                                load_params(dirs["adadiff"], ema=False)),
                  None, None, base_images, paired=False, source=dirs["adadiff"]))
  cfg, _, params, policy = recipe_lib.load_composed(dirs["composed"])
  arms.append(Arm("composed + policy", "composed + policy", ComposedSampler(cfg, info, params, policy),
                  None, None, base_images + ft_images, paired=False, source=dirs["composed"]))
  return arms


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
  return json.dumps({"arm": a.name, "num_eval": args.num_eval, "batch": args.batch, "resamples": args.resamples,
                     "stage": a.source, "done": done}, sort_keys=True)


def cached_quality(a, args, cache_dir: str) -> bool:
  """Loads an arm's quality measurement (features, steps, results) saved by an interrupted run with
  the same key; True if it did."""
  base = os.path.join(cache_dir, a.name.replace(" ", "_").replace("/", "_"))
  if not (os.path.exists(base + ".json") and os.path.exists(base + ".npz")):
    return False
  meta = storage.read_json(base + ".json")
  if meta.get("key") != quality_key(a, args):
    return False
  with np.load(base + ".npz", allow_pickle=False) as z:
    a.feats, a.steps_per_image = z["feats"], z["steps"]
  a.res.update(meta["res"])
  return True


def save_quality(a, args, cache_dir: str) -> None:
  os.makedirs(cache_dir, exist_ok=True)
  base = os.path.join(cache_dir, a.name.replace(" ", "_").replace("/", "_"))
  np.savez(base + ".npz", feats=a.feats, steps=a.steps_per_image)
  storage.write_json(base + ".json", {"key": quality_key(a, args), "res": a.res})


def measure(arms, classifier, args, info, log, cache_dir: str = "") -> None:
  """Quality of every arm (cached per arm in `cache_dir` when given, so an interrupted run resumes),
  then interleaved timing of every arm, then the paired differences to dense."""
  labels = balanced_labels(args.num_eval, info.num_classes)
  time_labels = balanced_labels(args.batch, info.num_classes)
  ref = ReferenceFD(*classifier.reference_stats)
  key = jax.random.PRNGKey(1234)
  for a in arms:
    if cache_dir and cached_quality(a, args, cache_dir):
      log(f"{a.name}: quality measured by an earlier run (FD {a.res['fd']:.3f}); reusing it")
      continue
    t = time.perf_counter()
    a.sample(time_labels, jax.random.PRNGKey(99), args.batch)      # compiles this setting
    a.first_call = time.perf_counter() - t
    imgs, steps = a.sample(labels, key, args.batch)
    a.feats, preds = features(classifier, imgs)
    a.steps_per_image = steps
    iv = fd_interval(a.feats, ref, num_resamples=args.resamples)
    a.res.update(fd=iv.value, fd_low=iv.low, fd_high=iv.high, acc=float(np.mean(preds == labels)),
                 steps=float(np.mean(steps)), nfe=a.nfe(steps))
    flops = (a.sampler.flops_per_image(steps) if a.steps is None
             else a.sampler.flops_per_image(steps=a.steps, method=a.method))
    a.res["gflops"] = flops / 1e9
    log(f"{a.name}: FD {iv}, acc {a.res['acc']:.3f}, avg steps {a.res['steps']:.2f}, {a.res['gflops']:.3f} GFLOPs")
    if cache_dir:
      save_quality(a, args, cache_dir)
  for a in arms:
    if a.first_call is None:     # quality came from the cache: compile this setting before timing
      t = time.perf_counter()
      a.sample(time_labels, jax.random.PRNGKey(99), args.batch)
      a.first_call = time.perf_counter() - t
  for _ in range(args.reps):      # interleaved: load changes hit every arm alike
    for a in arms:
      t = time.perf_counter()
      a.sample(time_labels, jax.random.PRNGKey(99), args.batch)
      a.times.append(time.perf_counter() - t)
  for a in arms:
    steady = float(np.median(a.times))
    a.res["ms"] = 1000 * steady / args.batch
    a.res["compile_s"] = max(0.0, a.first_call - steady)
  dense = {(a.method, a.steps): a for a in arms if a.kind == "dense"}
  for a in arms:
    if a.kind == "dense" or not a.paired:
      continue
    d = dense[(a.method, a.steps)]
    diff = fd_difference_interval(a.feats, d.feats, ref, num_resamples=args.resamples)
    a.res.update(diff=diff.value, diff_low=diff.low, diff_high=diff.high)


def real_reference_fd(classifier, data_config, args, seed: int):
  """FD [95% CI] of `--num_eval` real images (seed != the classifier's) against the reference
  statistics, bootstrapped like an arm: the score of a generator that samples the data exactly."""
  images, _ = data_lib.load_arrays(data_config, num=args.num_eval, seed=seed)
  feats, _ = features(classifier, images)
  return fd_interval(feats, ReferenceFD(*classifier.reference_stats), num_resamples=args.resamples)


# ---- report ------------------------------------------------------------------------------------
def ci(r, k="fd") -> str:
  return f"{r[k]:.3f} [{r[k + '_low']:.3f}, {r[k + '_high']:.3f}]"


def plot(arms, floor: float, floor_ref, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5.5))
  for m in sorted({a.method for a in arms if a.kind == "dense"}):
    pts = sorted((a for a in arms if a.kind == "dense" and a.method == m), key=lambda a: a.res["ms"])
    x, y = [a.res["ms"] for a in pts], [a.res["fd"] for a in pts]
    err = [[a.res["fd"] - a.res["fd_low"] for a in pts], [a.res["fd_high"] - a.res["fd"] for a in pts]]
    ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="--o", ms=4, lw=1, capsize=2, label=f"dense {m}")
    for a in pts:
      ax.annotate(str(a.steps), (a.res["ms"], a.res["fd"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
  for kind in dict.fromkeys(a.kind for a in arms if a.kind != "dense"):
    pts = [a for a in arms if a.kind == kind]
    err = [[a.res["fd"] - a.res["fd_low"] for a in pts], [a.res["fd_high"] - a.res["fd"] for a in pts]]
    ax.errorbar([a.res["ms"] for a in pts], [a.res["fd"] for a in pts], yerr=np.clip(err, 0, None),
                fmt="*" if kind.startswith("composed") else "s", ms=9 if kind.startswith("composed") else 6,
                capsize=2, label=kind)
  ax.axhline(floor, color="gray", lw=0.8, ls=":", label="real vs real")
  ax.axhspan(floor_ref.low, floor_ref.high, color="gray", alpha=0.15, lw=0)
  ax.axhline(floor_ref.value, color="gray", lw=0.8, ls="--", label="real vs reference (a perfect generator)")
  ax.set_xscale("log")
  ax.set_xlabel("sampling wall-clock, ms / image (log)")
  ax.set_ylabel("FD, classifier features (95% bootstrap CI)")
  ax.set_title("quality vs compute: dense frontier (numbers: steps) and methods", fontsize=10)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      words = set(f.read().split())
  except OSError:
    return "unknown"
  return " ".join(sorted(w for w in ("avx512_bf16", "amx_bf16", "avx2") if w in words)) or "none of avx2/avx512_bf16/amx_bf16"


def report(args, ctx, arms, floor, floor_ref, secs, path_md, path_png) -> str:
  dense = {(a.method, a.steps): a for a in arms if a.kind == "dense"}
  L = ["# Less compute at equal quality: dense frontier and methods from one dense checkpoint"
       + (" (SMOKE: tiny budgets, numbers meaningless)" if args.smoke else ""), ""]
  L.append(f"Date: {ctx['date']}. Machine: {ctx['machine']}. CPU flags: {ctx['flags']}.")
  L.append(f"Command: `python experiments/frontier.py {' '.join(ctx['argv'])}` (total {ctx['total_s']:.0f} s).")
  L.append(f"Base: {ctx['base']} at step {ctx['base_step']} x batch {ctx['batch']} = {ctx['base_images']} training "
           f"images ({ctx['model']}). Fine-tuning budget per method: {args.ft_fraction:g} x base = {ctx['ft_images']} "
           f"images = {ctx['ft_steps']} steps of {ctx['batch']} (train-then-prune: {ctx['ft_steps']} // N per group; "
           f"composed: split over PPFlow / routing / grouped). AdaDiff policy: {ctx['sel']} (labels only).")
  L.append(f"PPFlow stages (t_end, patch): {ctx['ppflow']}.")
  L.append(f"Quality: {args.num_eval} class-balanced samples per arm, same labels and noise for every arm; FD of "
           f"classifier features (not Inception) with a bootstrap 95% interval ({args.resamples} resamples); "
           f"floors: real-vs-reference ({args.num_eval} real images scored like an arm, i.e. a perfect generator) "
           f"**{floor_ref.value:.3f} [{floor_ref.low:.3f}, {floor_ref.high:.3f}]**, real-vs-real ({args.num_eval} vs "
           f"{args.num_eval} real images, both halves finite) {floor:.3f}. Timing: "
           f"{args.batch} images per call, median of {args.reps} interleaved calls after the first (compile "
           "time = first call minus steady). NFE: network evaluations per image without the CFG doubling "
           f"(CFG scale {ctx['cfg']}: every evaluation runs twice).")
  L.append("")
  L.append("## Dense frontier")
  L.append("")
  L.append("| solver | steps | NFE | FD [95% CI] | class acc | GFLOPs / image | ms / image | compile s |")
  L.append("|---|---:|---:|---|---:|---:|---:|---:|")
  for a in sorted((a for a in arms if a.kind == "dense"), key=lambda a: (a.method, a.steps)):
    r = a.res
    L.append(f"| {a.method} | {a.steps} | {r['nfe']:.0f} | {ci(r)} | {r['acc']:.3f} | {r['gflops']:.3f} | "
             f"{r['ms']:.3f} | {r['compile_s']:.1f} |")
  L.append("")
  lo, hi = min(args.steps), max(args.steps)
  probe = 4 if 4 in args.steps and hi != 4 else lo
  ms = args.method_solver
  if (ms, probe) in dense and (ms, hi) in dense and probe != hi:
    a, b = dense[(ms, probe)].res, dense[(ms, hi)].res
    outside = not (b["fd_low"] <= a["fd"] <= b["fd_high"])
    L.append(f"Testbed check: FD at {probe} {ms} steps {ci(a)} lies **{'outside' if outside else 'inside'}** the "
             f"interval of FD at {hi} steps {ci(b)}."
             + (" Quality depends on sampling compute here." if outside else
                " **The testbed is too easy**: quality does not depend on sampling compute within the noise; "
                "change it (harder data, larger images) before reading the comparisons below."))
  L.append("")
  L.append("## (a) Equal steps: each method vs dense at the same steps and solver")
  L.append("")
  L.append("Speed-up = dense / method (ms per image, and analytic FLOPs). FD difference = method - dense, paired "
           "bootstrap 95% interval (an interval holding 0: no difference beyond sampling noise).")
  L.append("")
  L.append("| method | training images | steps | NFE | FD [95% CI] | dense FD [95% CI] | FD diff [95% CI] | class acc | "
           "ms / image | speed-up (ms) | speed-up (FLOPs) |")
  L.append("|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|")
  goals = {}
  for a in arms:
    if a.kind == "dense":
      continue
    r = a.res
    if a.paired:
      d = dense[(a.method, a.steps)].res
      steps, diff = f"{a.steps}", ci(r, "diff")
    else:   # the policy picks the steps per image; compared with dense at the policy's largest step count
      top = max([s for s in args.steps if s <= max(a.sampler.spec.step_set)] or [hi])
      d = dense.get((ms, top), dense[(ms, hi)]).res
      steps, diff = f"{r['steps']:.2f} avg (vs dense {top})", "not paired (own noise)"
    sp_ms, sp_fl = d["ms"] / r["ms"], d["gflops"] / r["gflops"]
    L.append(f"| {a.name} | {a.images} | {steps} | {r['nfe']:.1f} | {ci(r)} | {ci(d)} | {diff} | {r['acc']:.3f} | "
             f"{r['ms']:.3f} | {sp_ms:.2f}x | {sp_fl:.2f}x |")
    if a.kind in GOAL_KINDS and a.steps == max(args.method_steps):
      goals[a.kind] = (r["fd"] <= d["fd_high"], sp_ms >= sp_fl, sp_ms, sp_fl, r["fd"], d)
  L.append("")
  L.append("## (b) Frontier: every point against the dense frontier")
  L.append("")
  L.append("| arm | FD [95% CI] | ms / image | GFLOPs / image | fastest dense setting with FD <= this arm's CI high | "
           "speed-up vs it |")
  L.append("|---|---|---:|---:|---|---:|")
  for a in arms:
    if a.kind == "dense":
      continue
    r = a.res
    ok = sorted((d for d in dense.values() if d.res["fd"] <= r["fd_high"]), key=lambda d: d.res["ms"])
    best = f"{ok[0].name} ({ok[0].res['ms']:.3f} ms, FD {ok[0].res['fd']:.3f})" if ok else "none (all dense worse)"
    sp = f"{ok[0].res['ms'] / r['ms']:.2f}x" if ok else "-"
    L.append(f"| {a.name} | {ci(r)} | {r['ms']:.3f} | {r['gflops']:.3f} | {best} | {sp} |")
    a.res["beyond"] = (ok[0].res["ms"] / r["ms"]) if ok else math.inf
  L.append("")
  L.append("## Goals (issue #17)")
  L.append("")
  for kind in GOAL_KINDS:
    if kind not in goals:
      continue
    within, fast, sp_ms, sp_fl, fd, d = goals[kind]
    L.append(f"- {kind} at {max(args.method_steps)} {ms} steps: FD {fd:.3f} {'within' if within else 'NOT within'} the "
             f"dense CI (<= {d['fd_high']:.3f}); measured speed-up {sp_ms:.2f}x "
             f"{'>=' if fast else '<'} its FLOPs speed-up {sp_fl:.2f}x: **{'met' if within and fast else 'not met'}**.")
  top = max(args.method_steps)
  scratch = {a.kind: a for a in arms if a.kind.endswith(" from scratch") and a.steps == top}
  for kind, a in scratch.items():
    conv = next((b for b in arms if b.kind == kind[:-len(" from scratch")] and b.steps == top), None)
    if conv is not None:
      L.append(f"- {kind} vs converted from the dense base, both {a.images} training images in all, at {top} {ms} "
               f"steps: FD {ci(a.res)} vs {ci(conv.res)} (dense {ci(dense[(ms, top)].res)}).")
  comp = next(a for a in arms if a.kind == "composed + policy")
  sp = comp.res["beyond"]
  L.append(f"- Composed + policy beyond the dense frontier (>= 1.5x faster than the fastest dense setting whose FD "
           f"is at most the composed CI's high end {comp.res['fd_high']:.3f}): "
           + (f"{sp:.2f}x: **{'met' if sp >= 1.5 else 'not met'}**." if math.isfinite(sp) else
              "no dense setting is that good, the composed model is faster than all of them at better FD: **met**."))
  reused = {k: v for k, (v, r) in secs.items() if r}
  known = sum(v for v in reused.values() if v is not None)
  L.append(f"- Whole benchmark on this machine: {(ctx['total_s'] + known) / 60:.1f} min (this invocation "
           f"{ctx['total_s'] / 60:.1f} min" + (f" + {known / 60:.1f} min of training recorded by the earlier invocation "
           "that made the reused stages" if reused else "") + "; goal: < 90 min on a 2-core CPU with the base cached)"
           + (" (some reused stages did not record their time)" if None in reused.values() else "") + ".")
  L.append("")
  L.append("Training seconds: " + (", ".join(
      f"{k} {'?' if v is None else f'{v:.0f}'}{' (reused)' if r else ''}" for k, (v, r) in secs.items()) or "none"))
  L.append("")
  L.append(f"![frontier]({os.path.basename(path_png)})")
  text = "\n".join(L) + "\n"
  with open(path_md, "w") as f:
    f.write(text)
  return text


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--work", default="/tmp/adaflow_frontier", help="stage directories of this benchmark")
  ap.add_argument("--base", default="", help="dense base workdir (default <work>/base; trained if not finished)")
  ap.add_argument("--base_as_is", action="store_true",
                  help="use the base's latest checkpoint even if its training has not finished (never trains it)")
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "frontier.md"))
  ap.add_argument("--cache", default="/tmp/.adaflow_cache", help="evaluation classifier cache")
  ap.add_argument("--compile_cache", default=None,
                  help="JAX persistent compilation cache (default <cache>/xla; '' = off): reruns skip compiling")
  ap.add_argument("--reuse", action="store_true", help="keep finished stages in --work (default: start fresh)")
  ap.add_argument("--smoke", action="store_true", help="tiny budgets: checks the pipeline, numbers mean nothing")
  ap.add_argument("--ft_fraction", type=float, default=0.2, help="fine-tuning images / base training images")
  ap.add_argument("--steps", default="2,4,8,16,32", help="dense frontier step counts")
  ap.add_argument("--solvers", default="euler,heun,ab2", help="dense frontier solvers")
  ap.add_argument("--method_steps", default="8,32", help="step counts of the equal-steps comparison")
  ap.add_argument("--method_solver", default="heun", help="solver of the methods (and their dense reference)")
  ap.add_argument("--selector_steps", type=int, default=100, help="AdaDiff policy steps (32 labels each)")
  ap.add_argument("--num_eval", type=int, default=2000, help="samples per arm (headline numbers: >= 2000)")
  ap.add_argument("--batch", type=int, default=200, help="images per sampling call (quality and timing)")
  ap.add_argument("--reps", type=int, default=3, help="timed calls per arm")
  ap.add_argument("--resamples", type=int, default=200, help="bootstrap resamples per interval")
  args = ap.parse_args(argv)
  argv_text = list(sys.argv[1:] if argv is None else argv)
  if args.smoke:
    s = SMOKE
    args.num_eval, args.batch, args.reps = s["num_eval"], s["batch_eval"], s["reps"]
    args.steps, args.method_steps = s["steps"], s["method_steps"]
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
  dirs, secs = train_arms(c, dense, ft_steps, base_step, args.work, log)

  classifier = get_classifier(c.data, args.cache, seed=int(c.eval.classifier_seed), log=log)
  floor = real_vs_real_fd(classifier, c.data, args.num_eval)
  log(f"real-vs-real FD floor ({args.num_eval} vs {args.num_eval}): {floor:.3f}")
  floor_ref = real_reference_fd(classifier, c.data, args, seed=int(c.eval.classifier_seed) + 1000)
  log(f"real-vs-reference FD floor ({args.num_eval} real images): {floor_ref}")
  arms = build_arms(c, dense, dirs, args, info, base_images, ft_steps * bs)
  measure(arms, classifier, args, info, log, cache_dir=os.path.join(args.work, "quality"))

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  png = os.path.splitext(args.out)[0] + ".png"
  plot(arms, floor, floor_ref, png)
  m = bcfg.model
  ctx = dict(date=date, machine=machine, flags=cpu_flags(), argv=argv_text, total_s=time.time() - t0, base=base,
             base_step=base_step, batch=bs, base_images=base_images, ft_images=ft_steps * bs, ft_steps=ft_steps,
             cfg=float(bcfg.sample.cfg_scale), ppflow=ppflow_note(c),
             model=f"{bcfg.name}: {bcfg.data.name} {bcfg.data.image_size}x{bcfg.data.image_size}, DiT width "
                   f"{m.hidden_size} depth {m.depth} patch {m.patch_size}",
             sel=f"{c.compose.selector_steps} steps x {c.compose.selector_batch} labels, step set "
                 f"{tuple(c.selector.step_set)}, reward {c.selector.quality}")
  text = report(args, ctx, arms, floor, floor_ref, secs, args.out, png)
  print(text)
  with open(os.path.join(args.work, "frontier.json"), "w") as f:
    json.dump({a.name: dict(a.res, times=a.times, images=a.images) for a in arms}, f, indent=1)
  log(f"wrote {args.out} and {png}; done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  main()
