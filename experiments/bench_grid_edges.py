"""Time-partition edges on the sampling grid: sample quality and NFE before / after the change.

    ADAFLOW_BENCH_LOCKED=1 flock /tmp/adaflow-bench.lock python -m experiments.bench_grid_edges --steps 4,6,8,16
    python -m experiments.bench_grid_edges --smoke --workdir /tmp/adaflow_grid_edges_smoke
        # tiny budgets, 64 samples, 4 steps: ~2.5-3.5 min from scratch on the loaded 2-core CPU (mostly
        # compilation), ~40 s once its models and the classifier are cached

Full run on the loaded 2-core CPU: ~11 min training (PPFlow-3 ~5 min, grouped ~6 min) + ~6.5 min
sampling and evaluation for 4 step counts. The "Reading" section of the results file is written by
hand after the run; a rerun keeps it, marked for checking against the new table.

`adaflow.flow.partition.TimePartition.segments(grid)` now inserts every bucket edge (PPFlow stage
ends, timestep-group edges) into the ODE time grid, so each step lies inside one bucket and is
integrated by the network trained on that bucket. Before the change:
  PPFlow   (objectives/ppflow.py)   each step of the UNREFINED uniform grid went to the stage
           holding the step's midpoint, stage s holding (t_end[s-1], t_end[s]] (right-closed);
  grouped  (objectives/grouped.py)  each step of the UNREFINED grid went to the group holding the
           step's START time, group i holding [e_i, e_{i+1}).
A step that straddled an edge was integrated wholly by one network, partly outside its range.

Models (trained once into --workdir, reused when a finished run with the same budget is there):
  PPFlow-3  configs/quickstart_ppflow3.py, --pp_steps steps (default 800) of batch --batch
  grouped   configs/quickstart_grouped.py (train-then-prune, N = 4 SNR groups, k = 0.5), stage 1
            --stage1 steps, pruning --rounds x --proposals, stage 2 --stage2 steps per group
Both rules sample the SAME params with the SAME noise and labels (noise = jax.random.normal(rng,
(B,) + image_shape) inside each generator, rng = fold_in(PRNGKey(--seed), batch index)), with the
config's sampler (`sample.method`: Heun for the quick starts) and CFG (`sample.cfg_scale(s)`), at
--steps uniform steps. "after" is the objective's own `generate` (edge-refined grid); "before"
re-implements the old dispatch here on top of the same velocity functions and `flow.integrate`.
One jax.jit per (model, rule, steps).

Metric: FD (classifier features, adaflow.eval; not Inception FID) and class accuracy of --num
class-balanced samples per cell; a percentile bootstrap 95% CI of FD (--boot resamples of the
generated features, reference statistics fixed) and, on the "after" rows, a paired bootstrap CI
of FD(after) - FD(before) (the same resampled indices for both rules: sample i of both rules has
the same noise and label). NFE = network evaluations per image: steps of the integrated grid x 2
for Heun (its second evaluation at every step, the last one included) or x 1 for Euler; CFG
evaluates the conditional and unconditional halves as ONE call on a 2B batch, so it doubles the
batch (FLOPs), not the NFE.
Writes experiments/results/grid_edges.md (or --out).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adaflow import flow
from adaflow.eval import evaluate_samples, get_classifier
from adaflow.eval import bootstrap
from adaflow.eval import frechet
from adaflow.eval.frechet import feature_statistics
from adaflow.flow.driver import balanced_labels
from adaflow.pipelines.grouped import load_grouped, run_grouped
from adaflow.train.loop import load_trainer_and_params, train
from experiments.common import RESULTS, load_config, machine_line, matmul_flags, utc_now, write_report


def bench_overrides(c, args, steps: int):
  """Budget and bookkeeping shared by both models (the quick-start model and sampler unchanged)."""
  c.train.batch_size = args.batch
  c.train.warmup_steps = max(1, min(200, steps // 10))
  c.train.ckpt_every = max(1, steps)
  c.train.log_every = max(1, steps // 8)
  c.train.final_samples = False
  c.train.sample_every = 0
  c.eval.at_end = False
  c.eval.cache_dir = args.cache
  return c


def ppflow_config(args):
  c = bench_overrides(load_config("quickstart_ppflow3"), args, args.pp_steps)
  c.train.steps = args.pp_steps
  return c


def grouped_config(args):
  c = bench_overrides(load_config("quickstart_grouped"), args, args.stage1)
  g = c.grouped
  g.stage1_steps, g.stage2_steps = args.stage1, args.stage2
  g.stage2_warmup_steps = max(1, min(20, args.stage2 // 5))
  g.rounds, g.proposals_per_round = args.rounds, args.proposals
  g.proxy_samples, g.importance_batches = args.proxy_samples, args.importance_batches
  return c


# ---- training (or reuse) ----------------------------------------------------------------------
def train_ppflow(args, log) -> str:
  """Trains PPFlow-3 into <workdir>/ppflow3_<steps>x<batch> unless a finished run is there."""
  wd = os.path.join(args.workdir, f"ppflow3_{args.pp_steps}x{args.batch}")
  done = os.path.join(wd, "BENCH_DONE")
  if os.path.exists(done):
    log(f"PPFlow-3: reusing the finished run in {wd}")
    return wd
  t0 = time.time()
  train(ppflow_config(args), wd)
  with open(done, "w") as f:
    json.dump({"steps": args.pp_steps, "batch": args.batch, "seconds": time.time() - t0}, f)
  log(f"PPFlow-3: trained {args.pp_steps} steps in {time.time() - t0:.0f} s -> {wd}")
  return wd


def train_grouped(args, log) -> str:
  """Train-then-prune into <workdir>/grouped_<s1>_<s2>_r<rounds>x<proposals>_b<batch> (resumable;
  a run with grouped.json is finished and reused)."""
  wd = os.path.join(args.workdir, f"grouped_{args.stage1}_{args.stage2}_r{args.rounds}x{args.proposals}_b{args.batch}")
  if os.path.exists(os.path.join(wd, "grouped.json")):
    log(f"grouped: reusing the finished run in {wd}")
    return wd
  t0 = time.time()
  run_grouped(grouped_config(args), wd)
  log(f"grouped: stage 1 + pruning + stage 2 in {time.time() - t0:.0f} s -> {wd}")
  return wd


# ---- the two dispatch rules -------------------------------------------------------------------
def runs_of(keys, grid) -> list[tuple[int, np.ndarray]]:
  """Maximal runs of consecutive steps with one key: [(key, grid[a:b + 1])]."""
  out, a = [], 0
  for j in range(1, len(keys) + 1):
    if j == len(keys) or keys[j] != keys[a]:
      out.append((int(keys[a]), np.asarray(grid[a:j + 1])))
      a = j
  return out


def old_ppflow_segments(t_ends, grid) -> list[tuple[int, np.ndarray]]:
  """The old PatchSchedule.grid_slices: unrefined grid, each step to the stage of its midpoint
  (float64), stage s = the first with t <= t_end[s] (right-closed stages)."""
  grid = np.asarray(grid, np.float64)

  def stage_of(t):
    for s, e in enumerate(t_ends):
      if t <= e:
        return s
    return len(t_ends) - 1
  return runs_of([stage_of(0.5 * (a + b)) for a, b in zip(grid[:-1], grid[1:])], grid)


def old_grouped_segments(edges, grid) -> list[tuple[int, np.ndarray]]:
  """The old GroupedModel.segments: unrefined grid, each step to the group of its start time
  (float32, group i = [e_i, e_{i+1}), the last also holds 1)."""
  grid = np.asarray(grid, np.float64)
  inner = np.asarray(edges[1:-1], np.float32)
  g = np.clip(np.searchsorted(inner, grid[:-1].astype(np.float32), side="right"), 0, len(edges) - 2)
  return runs_of(g.tolist(), grid)


class Model:
  """One trained model (its composed generator, adaflow.methods.generator_for) and how each rule
  samples it."""

  def __init__(self, name, generator, params, config, kind):
    self.name, self.generator, self.params, self.config, self.kind = name, generator, params, config, kind
    self.method = str(config.sample.method)
    self.cfg_scale = float(config.sample.cfg_scale)
    if kind == "ppflow":
      self.partition = generator.spec.schedule.partition
      self.cfg_text = "CFG " + "/".join(f"{s:g}" for s in generator.stage_cfg_scales(self.cfg_scale)) + " per stage"
    else:
      self.partition = generator.partitions()[0]
      self.cfg_text = f"CFG {self.cfg_scale:g}"

  def segments(self, rule: str, steps: int) -> list[tuple[int, np.ndarray]]:
    grid = flow.time_grid(steps)
    if rule == "after":
      return self.partition.segments(grid)
    if self.kind == "ppflow":
      return old_ppflow_segments(self.generator.spec.schedule.t_ends, grid)
    return old_grouped_segments(self.partition.edges, grid)

  def nfe(self, rule: str, steps: int) -> int:
    n = sum(len(sub) - 1 for _, sub in self.segments(rule, steps))
    return n * (2 if self.method == "heun" else 1)

  def generate_fn(self, rule: str, steps: int):
    """jitted (params, rng, labels [B]) -> images [B, H, W, C]."""
    gen, method = self.generator, self.method
    if rule == "after":
      return jax.jit(functools.partial(gen.generate, steps=steps, method=method, cfg_scale=self.cfg_scale))
    segments = self.segments("before", steps)
    scales = gen.stage_cfg_scales(self.cfg_scale)

    def before(params, rng, labels):
      x = gen.noise(rng, labels.shape[0])
      for k, sub in segments:   # k: the PPFlow stage, or the timestep group
        g, s = (0, k) if self.kind == "ppflow" else (k, 0)
        x = flow.integrate(gen.velocity_fn(params, g, s, labels, scales[s]), x, sub, method)
      return x
    return jax.jit(before)


def describe(segments) -> str:
  """'0:[0, .25] 1:[.25, .5] ...' (bucket: first and last time of the run, number of steps)."""
  return " ".join(f"{k}:[{sub[0]:.3g},{sub[-1]:.3g}]x{len(sub) - 1}" for k, sub in segments)


def generate(fn, params, labels: np.ndarray, seed: int, batch: int) -> np.ndarray:
  """Images for `labels`, batch i with fold_in(PRNGKey(seed), i) (the last batch padded)."""
  out = []
  for i, a in enumerate(range(0, len(labels), batch)):
    chunk = labels[a:a + batch]
    y = np.concatenate([chunk, np.zeros(batch - len(chunk), np.int32)])
    imgs = fn(params, jax.random.fold_in(jax.random.PRNGKey(seed), i), jnp.asarray(y))
    out.append(np.asarray(imgs)[:len(chunk)])
  return np.concatenate(out)


def ci(boot: np.ndarray, point: float) -> str:
  """95% bootstrap interval, shifted by the bootstrap's bias estimate (adaflow.eval.bootstrap)."""
  iv = bootstrap.interval_from_resamples(point, boot)
  return f"[{iv.low:.3f}, {iv.high:.3f}]"


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_grid_edges", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default="/tmp/adaflow_grid_edges", help="cache of the trained models")
  ap.add_argument("--out", default=None, help="results file (default experiments/results/grid_edges.md; "
                                              "--smoke: <workdir>/grid_edges_smoke.md)")
  ap.add_argument("--cache", default=None, help="evaluation classifier cache (default <workdir>/.adaflow_cache)")
  ap.add_argument("--batch", type=int, default=128, help="training batch")
  ap.add_argument("--pp_steps", type=int, default=800)
  ap.add_argument("--stage1", type=int, default=600)
  ap.add_argument("--stage2", type=int, default=100)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--proposals", type=int, default=2)
  ap.add_argument("--proxy_samples", type=int, default=128)
  ap.add_argument("--importance_batches", type=int, default=2)
  ap.add_argument("--steps", default=None, help="sampling step counts, uniform grid before refinement "
                                                "(default 4,8,16; --smoke: 4)")
  ap.add_argument("--num", type=int, default=1000, help="class-balanced samples per cell")
  ap.add_argument("--gen_batch", type=int, default=250)
  ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples")
  ap.add_argument("--seed", type=int, default=1234, help="sampling noise seed")
  ap.add_argument("--smoke", action="store_true", help="tiny budgets and 64 samples: checks the script runs")
  args = ap.parse_args()
  if args.smoke:
    args.batch, args.pp_steps, args.stage1, args.stage2 = 32, 20, 20, 4
    args.rounds, args.proposals, args.proxy_samples, args.importance_batches = 1, 1, 32, 1
    args.num, args.gen_batch, args.boot = 64, 64, 20
    args.steps = args.steps or "4"
  args.cache = args.cache or os.path.join(args.workdir, ".adaflow_cache")
  if args.out is None:
    args.out = (os.path.join(args.workdir, "grid_edges_smoke.md") if args.smoke
                else os.path.join(RESULTS, "grid_edges.md"))
  step_list = [int(s) for s in (args.steps or "4,8,16").split(",")]

  machine, started = machine_line(), utc_now()
  t_start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  log = lambda m: print(f"[grid_edges {time.time() - t_start:6.0f}s] {m}", flush=True)

  # ---- models ------------------------------------------------------------------------------
  pp_dir, gr_dir = train_ppflow(args, log), train_grouped(args, log)
  train_s = time.time() - t_start
  tr, pp_params, _ = load_trainer_and_params(pp_dir)
  gobj, gparams, gcfg = load_grouped(gr_dir, None)
  models = [Model("PPFlow-3", tr.generator(), pp_params, tr.config, "ppflow"),
            Model("grouped (TDC)", gobj, gparams, gcfg, "grouped")]

  # ---- samples and features ------------------------------------------------------------------
  cfg0 = tr.config
  clf = get_classifier(cfg0.data, args.cache, seed=int(cfg0.eval.classifier_seed), log=log,
                       steps=int(cfg0.eval.classifier_steps))
  fast_fd = frechet.ReferenceFD(*clf.reference_stats)
  labels = balanced_labels(args.num, tr.objective.num_classes)
  batch = min(args.gen_batch, args.num)
  idx = bootstrap.resample_indices(args.num, args.boot, seed=0)
  cells = {}
  for m in models:
    for steps in step_list:
      imgs = {}
      for rule in ("before", "after"):
        t0 = time.time()
        x = generate(m.generate_fn(rule, steps), m.params, labels, args.seed, batch)
        gen_s = time.time() - t0
        q = evaluate_samples(clf, x, labels)
        feats, _ = clf.features_and_logits(np.clip(x.astype(np.float32), -1.0, 1.0))
        full = fast_fd(*feature_statistics(feats))
        if abs(full - q["fd"]) > 1e-3 * max(1.0, q["fd"]):
          raise RuntimeError(f"fast FD {full} disagrees with adaflow.eval's FD {q['fd']}")
        boot = bootstrap.resampled_fds(feats, fast_fd, idx)
        imgs[rule] = x
        cells[(m.name, steps, rule)] = dict(fd=q["fd"], acc=q["class_acc"], boot=boot, nfe=m.nfe(rule, steps),
                                            segments=describe(m.segments(rule, steps)), seconds=gen_s)
        log(f"{m.name} {steps} steps {rule}: NFE {m.nfe(rule, steps)} FD {q['fd']:.3f} {ci(boot, q['fd'])} "
            f"acc {q['class_acc']:.3f} ({gen_s:.0f} s incl. compile)")
      diff = float(np.max(np.abs(imgs["after"] - imgs["before"])))
      cells[(m.name, steps, "after")]["max_abs_diff"] = diff
      cells[(m.name, steps, "after")]["delta"] = cells[(m.name, steps, "after")]["boot"] - cells[(m.name, steps, "before")]["boot"]

  # ---- report ------------------------------------------------------------------------------
  rows = []
  for m in models:
    for steps in step_list:
      for rule in ("before", "after"):
        c = cells[(m.name, steps, rule)]
        if rule == "after":
          d = c["fd"] - cells[(m.name, steps, "before")]["fd"]
          delta = "identical samples" if c["max_abs_diff"] == 0.0 else f"{d:+.3f} {ci(c['delta'], d)}"
        else:
          delta = ""
        rows.append(f"| {m.name} | {steps} | {rule} | {c['nfe']} | {c['fd']:.3f} {ci(c['boot'], c['fd'])} | "
                    f"{c['acc']:.3f} | {delta} |")
  dispatch = []
  for m in models:
    for steps in step_list:
      b, a = cells[(m.name, steps, "before")], cells[(m.name, steps, "after")]
      dispatch.append(f"| {m.name} | {steps} | `{b['segments']}` | `{a['segments']}` | {a['max_abs_diff']:.3g} |")
  biases = [np.mean(c["boot"]) - c["fd"] for c in cells.values()]
  bias_lo, bias_hi = float(np.min(biases)), float(np.max(biases))
  edges = {m.name: ", ".join(f"{e:.3f}" for e in m.partition.inner) for m in models}
  cmd = "python -m experiments.bench_grid_edges " + " ".join(sys.argv[1:])
  if os.environ.get("ADAFLOW_BENCH_LOCKED"):
    cmd = "ADAFLOW_BENCH_LOCKED=1 flock /tmp/adaflow-bench.lock " + cmd
  pm = models[0]
  md = [
      "# Partition edges on the sampling grid: before / after (PPFlow-3, timestep-grouped)" +
      (" — SMOKE RUN (tiny budgets, not a result)" if args.smoke else ""), "",
      f"Date: {started}. Machine: {machine}. CPU flags: {matmul_flags()}.",
      f"Command: `{cmd.strip()}` (total {time.time() - t_start:.0f} s, of which training or loading the models "
      f"{train_s:.0f} s).", "",
      f"Models (digits 16x16, quick-start DiT width 128, depth 4, 4 heads, bf16 matmuls), trained once and sampled "
      f"by both rules with the same params, noise and labels: **PPFlow-3** = configs/quickstart_ppflow3.py "
      f"(base patch 2, stages 4x4 / 2x4 / 2x2 pixels, edges t = {edges['PPFlow-3']}), {args.pp_steps} steps x "
      f"batch {args.batch}; **grouped (TDC)** = configs/quickstart_grouped.py (N = 4 groups equal in SNR dB, "
      f"edges t = {edges['grouped (TDC)']}, k = 0.5), stage 1 {args.stage1} steps x batch {args.batch}, pruning "
      f"{args.rounds} rounds x {args.proposals} proposals, stage 2 {args.stage2} steps per group. Budgets are "
      f"far below the quick starts (2500 x 128): compare rows with each other, not with README's FD.",
      f"Sampling: the configs' sampler ({pm.method}; PPFlow {pm.cfg_text}, grouped {models[1].cfg_text}), "
      f"uniform grid of `steps` steps. **before** = the old dispatch on the unrefined grid (PPFlow: each step to "
      f"the stage holding its midpoint, stages right-closed (t_end[s-1], t_end[s]]; grouped: each step to the "
      f"group holding its start time, [e_i, e_i+1)); **after** = the objective's `generate` (every edge inserted "
      f"as a grid point, each step inside one bucket).",
      f"Metric: FD = Frechet distance of the digits classifier's features (adaflow.eval; not Inception FID) and "
      f"class accuracy, {args.num} class-balanced samples per cell (noise seed {args.seed}); FD CI = 95% "
      f"percentile interval of {args.boot} bootstrap resamples of the generated features (reference statistics "
      f"fixed), shifted down by the bootstrap bias estimate: resampling with replacement repeats samples and "
      f"inflates FD, by {bias_lo:.3f} to {bias_hi:.3f} (mean bootstrap FD - FD) in these cells. dFD = FD(after) - "
      f"FD(before) with a paired bootstrap CI (same resampled indices for both rules, same shift). NFE = network evaluations "
      f"per image = steps of the integrated grid x {2 if pm.method == 'heun' else 1} ({pm.method}); CFG runs the "
      f"conditional and unconditional halves as one call on a 2B batch, so it doubles FLOPs, not NFE.", "",
      "| model | steps | rule | NFE | FD [95% CI] | class acc | dFD after - before [paired 95% CI] |",
      "|---|---|---|---|---|---|---|", *rows, "",
      "Dispatch (bucket:[first, last time of the run] x steps; max |after - before| over all sample pixels):", "",
      "| model | steps | before | after | max abs diff |", "|---|---|---|---|---|", *dispatch, "",
      "## Reading", ""]
  # The reading is prose written from the table; a rerun keeps the previous one, marked, so that it
  # is checked against the new numbers instead of silently lost.
  previous = open(args.out).read() if os.path.exists(args.out) else ""
  if "## Reading\n" in previous:
    kept = "(Kept from the previous run of this script: check it against the table above.)"
    md += [kept, "", previous.split("## Reading\n", 1)[1].strip().replace(kept, "").strip(), ""]
  else:
    md += ["(No reading yet: write one from the table above.)", ""]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(os.path.join(args.workdir, "grid_edges_smoke.json" if args.smoke else "grid_edges.json"), "w") as f:
    json.dump({f"{k[0]}|{k[1]}|{k[2]}": {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv)
                                          for kk, vv in v.items()} for k, v in cells.items()}, f, indent=1)
  write_report("\n".join(md), args.out)


if __name__ == "__main__":
  main()
