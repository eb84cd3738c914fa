"""Quality vs compute frontier: every adaptive-compute method alone and all of them composed.

    flock /tmp/adaflow-bench.lock python experiments/frontier.py [--reuse] [--smoke]

Same data (embedded digits 16x16), same model (configs/quickstart_composed.py: the quick-start DiT
at base patch 2), same total training images T = (dense + ppflow + routing + grouped steps) x batch
for every arm (the step policies additionally see labels only):

  composed       adaflow.pipelines.recipe: dense D -> PPFlow-3 -> routing -> grouped pruning -> selector
  dense          flow matching, T/batch steps from scratch
  PPFlow-3       convert-stages from the recipe's dense stage (D steps) + T/batch - D PPFlow steps
  routed         --init from the recipe's dense stage + T/batch - D routed_flow_matching steps
  grouped        train-then-prune (adaflow.pipelines.grouped.run_grouped) with the recipe's dense stage as
                 stage 1 and (T/batch - D) / N steps per group
  dense+selector AdaDiff policy over the dense arm (same step set / reward as the composed one)
The recipe's intermediate stages are reported too (cumulative: +ppflow, +routing, +grouped), with
their own (smaller) training images, to show what each method contributes; the dense arm is also
sampled at fewer steps (the dense frontier).

Measured in one run: FD and class accuracy (adaflow.eval, classifier features; `--num_eval`
class-balanced samples, the same labels and seed for every arm); analytic FLOPs per image
(adaflow.compose.flops, one count for all arms, routing at its snapped learned ratios, the selector
at its chosen step counts); sampling wall-clock per image on `--time_n` labels, all arms timed in
interleaved repetitions after compilation (median). Writes experiments/results/frontier.md and
frontier.png (FD vs ms/image). `--reuse` keeps finished trainings in `--work`; `--smoke` uses tiny
budgets (a pipeline check; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from adaflow import data as data_lib  # noqa: E402
from adaflow.compose import flops as flops_lib  # noqa: E402
from adaflow.pipelines import recipe as recipe_lib  # noqa: E402
from adaflow.pipelines.stages import run_stage  # noqa: E402
from adaflow.compose.generator import ComposedGenerator  # noqa: E402
from adaflow.compose.sampler import ComposedSampler  # noqa: E402
from adaflow.config_defaults import load_config_file  # noqa: E402
from adaflow.eval import evaluate_samples, get_classifier  # noqa: E402
from adaflow.models.grouped import group_key  # noqa: E402
from adaflow.eval.generate import balanced_labels  # noqa: E402

SMOKE = dict(dense_steps=20, ppflow_steps=6, routing_steps=6, grouped_steps=8, selector_steps=3, selector_batch=8,
             batch=16, rounds=1, proposals=1, proxy=16, imp_batches=1, num_eval=64, time_n=64, reps=2)


def build_config(args):
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart_composed.py"))
  c.eval.cache_dir = args.cache
  c.eval.at_end = False
  cc = c.compose
  if args.smoke:
    s = SMOKE
    cc.dense_steps, cc.ppflow_steps, cc.routing_steps = s["dense_steps"], s["ppflow_steps"], s["routing_steps"]
    cc.grouped_steps, cc.selector_steps, cc.selector_batch = s["grouped_steps"], s["selector_steps"], s["selector_batch"]
    c.train.batch_size = s["batch"]
    c.train.warmup_steps = 5
    cc.finetune_warmup_steps = 2
    c.grouped.rounds, c.grouped.proposals_per_round = s["rounds"], s["proposals"]
    c.grouped.proxy_samples, c.grouped.importance_batches = s["proxy"], s["imp_batches"]
  return c


def _log(t0):
  return lambda m: print(f"[frontier {time.time() - t0:6.0f}s] {m}", flush=True)


def subset_config(config, result, **on):
  """Objective-'composed' config with exactly the methods in `on` (the FLOPs counter's view of an arm)."""
  c = config.copy_and_resolve_references()
  for m in ("ppflow", "routing", "grouped", "selector"):
    c.compose[m] = bool(on.get(m, False))
  g = recipe_lib.generator_config(c, "final", result if on.get("grouped") else None)
  if on.get("selector"):
    g.compose.selector = True
  return g


# ---- training ---------------------------------------------------------------------------------
def train_all(config, work, log):
  from adaflow.pipelines.grouped import run_grouped
  from adaflow.train.loop import train
  from adaflow.train.loop import load_params
  cc = config.compose
  total = cc.dense_steps + cc.ppflow_steps + cc.routing_steps + cc.grouped_steps
  rest = total - cc.dense_steps
  secs = {}

  t0 = time.time()
  summary = recipe_lib.run_recipe(config, os.path.join(work, "composed"), log=log)
  secs["composed recipe"] = time.time() - t0
  dense_stage = summary["stages"]["dense"]["dir"]

  def once(name, fn):
    def timed(d):
      t = time.time()
      fn(d)
      secs[name] = time.time() - t
      log(f"{name}: trained in {secs[name]:.0f}s")
    return run_stage(work, name, timed, log=log)

  def dense_fn(d):
    c = recipe_lib.dense_config(config)
    c.train.steps = total
    train(c, d)
  dirs = {"dense": once("dense", dense_fn)}

  def pp_fn(d):
    c = recipe_lib.ppflow_config(config)
    c.train.steps = rest
    if not recipe_lib._has_checkpoint(d):
      from adaflow.pipelines.convert_stages import convert_workdir
      convert_workdir(dense_stage, c, d, log=log)
    train(c, d)
  dirs["ppflow"] = once("ppflow", pp_fn)

  def routed_fn(d):
    c = recipe_lib.dense_config(config)
    c.name = "frontier_routed"
    c.objective = "routed_flow_matching"
    c.train.steps = rest
    c.train.lr = float(cc.finetune_lr)
    c.train.warmup_steps = int(cc.finetune_warmup_steps)
    train(c, d, init_params=None if recipe_lib._has_checkpoint(d) else load_params(dense_stage))
  dirs["routed"] = once("routed", routed_fn)

  n = int(config.grouped.num_groups)

  def grouped_fn(d):
    c = recipe_lib.dense_config(config)
    c.name = "frontier_grouped"
    c.grouped = config.grouped.copy_and_resolve_references()
    c.grouped.stage1_steps = cc.dense_steps
    c.grouped.stage2_steps = max(1, rest // n)
    c.grouped.stage2_lr = float(cc.finetune_lr)
    c.grouped.stage2_warmup_steps = int(cc.finetune_warmup_steps)
    s1 = os.path.join(d, "stage1")
    if not os.path.exists(s1):
      shutil.copytree(dense_stage, s1)            # the recipe's dense stage is stage 1 (same D steps)
    run_grouped(c, d, log=log)
  dirs["grouped"] = once("grouped", grouped_fn)

  def sel_fn(d):
    c = recipe_lib.selector_config(config, dirs["dense"])
    train(c, d)
  dirs["dense+selector"] = once("dense_selector", sel_fn)
  return summary, dirs, secs, total


# ---- arms -------------------------------------------------------------------------------------
class Arm:
  def __init__(self, name, images, sample_fn, time_fn, flops, note=""):
    self.name, self.images, self.sample_fn, self.time_fn, self.flops, self.note = name, images, sample_fn, time_fn, flops, note
    self.res = {}
    self.times = []


def objective_arm(name, images, obj, params, s, steps, flops, time_labels, note=""):
  fn = jax.jit(lambda p, r, y: obj.generate(p, r, y, steps=steps, method=s.method, cfg_scale=s.cfg_scale))

  def sample(labels, key, chunk):
    out = []
    for i, a in enumerate(range(0, len(labels), chunk)):
      y = labels[a:a + chunk]
      pad = chunk - len(y)
      yy = np.concatenate([y, np.zeros(pad, np.int32)])
      out.append(np.asarray(fn(params, jax.random.fold_in(key, i), jnp.asarray(yy)))[:len(y)])
    return np.concatenate(out), np.full(len(labels), steps)

  y_t = jnp.asarray(time_labels)

  def timed():
    jax.block_until_ready(fn(params, jax.random.PRNGKey(99), y_t))
  return Arm(name, images, sample, timed, flops, note)


def sampler_arm(name, images, sampler, time_labels, chunk, note=""):
  def sample(labels, key, c):
    out = sampler.sample(key, labels, batch_size=c)
    return out["images"], out["steps"]

  def timed():
    out = sampler.sample(jax.random.PRNGKey(99), time_labels, batch_size=chunk)
    jax.block_until_ready(jnp.asarray(out["images"][:1]))
  arm = Arm(name, images, sample, timed, None, note)
  arm.flops_fn = lambda steps: sampler.flops_per_image(steps if sampler.selector is not None else None)
  return arm


def build_arms(config, summary, dirs, total, args, time_labels):
  from adaflow.train.loop import load_params, load_trainer_and_params
  cc = config.compose
  info = data_lib.get_info(config.data)
  bs = int(config.train.batch_size)
  T = total * bs
  s = config.sample
  with open(os.path.join(args.work, "composed", "prune", "result.json")) as f:
    comp_result = json.load(f)
  arms = []
  # dense, and the dense frontier at fewer steps
  dense_gen = ComposedGenerator(subset_config(config, None), info)
  dense_params = load_params(dirs["dense"])
  for steps in sorted({int(s.steps), int(s.steps) // 2, int(s.steps) // 4}, reverse=True):
    f = flops_lib.sampling_flops(dense_gen, dense_params, steps, s.method, s.cfg_scale)
    arms.append(objective_arm(f"dense {steps} steps", T, dense_gen, dense_params, s, steps, f, time_labels))
  # PPFlow-3
  tr, pp_params, _ = load_trainer_and_params(dirs["ppflow"])
  g = ComposedGenerator(subset_config(config, None, ppflow=True), info)
  arms.append(objective_arm("PPFlow-3", T, tr.generator(), pp_params, s, int(s.steps),
                            flops_lib.sampling_flops(g, pp_params, int(s.steps), s.method, s.cfg_scale), time_labels))
  # routed
  tr, r_params, _ = load_trainer_and_params(dirs["routed"])
  g = ComposedGenerator(subset_config(config, None, routing=True), info)
  arms.append(objective_arm("routed", T, tr.generator(), r_params, s, int(s.steps),
                            flops_lib.sampling_flops(g, r_params, int(s.steps), s.method, s.cfg_scale), time_labels))
  # grouped (train-then-prune)
  from adaflow.pipelines.grouped import grouped_generator
  with open(os.path.join(dirs["grouped"], "prune", "result.json")) as f:
    g_result = json.load(f)
  gp = {group_key(gr["group"]): load_params(os.path.join(dirs["grouped"], f"group_{gr['group']}")) for gr in g_result["groups"]}
  gobj = grouped_generator(config, g_result)
  g = ComposedGenerator(subset_config(config, g_result, grouped=True), info)
  n = int(config.grouped.num_groups)
  arms.append(objective_arm("grouped (train-then-prune)", (cc.dense_steps + n * max(1, (total - cc.dense_steps) // n)) * bs,
                            gobj, gp, s, int(s.steps), flops_lib.sampling_flops(g, gp, int(s.steps), s.method, s.cfg_scale),
                            time_labels))
  # dense + selector
  policy = load_params(dirs["dense+selector"], ema=False)
  sel_sampler = ComposedSampler(subset_config(config, None, selector=True), info, dense_params, policy)
  arms.append(sampler_arm("dense+selector", T, sel_sampler, time_labels, args.chunk))
  # the recipe's cumulative stages
  st = summary["stages"]
  imgs = 0
  for stage, on in (("dense", {}), ("ppflow", dict(ppflow=True)), ("routed", dict(ppflow=True, routing=True)),
                    ("grouped", dict(ppflow=True, routing=True, grouped=True))):
    imgs += st[stage]["images"]
    if stage == "dense":
      continue
    c = subset_config(config, comp_result, **on)
    sampler = ComposedSampler(c, info, load_params(st[stage]["dir"]))
    arm = sampler_arm(f"recipe: +{stage}" if stage != "grouped" else "composed generator (no selector)", imgs,
                      sampler, time_labels, args.chunk, note="cumulative recipe stage")
    arms.append(arm)
  c, _, gparams, policy = recipe_lib.load_composed(os.path.join(args.work, "composed"))
  arms.append(sampler_arm("composed (all four)", T, ComposedSampler(c, info, gparams, policy), time_labels, args.chunk))
  return arms


# ---- report -----------------------------------------------------------------------------------
def pareto(points):
  """Indices of points not dominated in (time, fd) (both lower is better)."""
  out = []
  for i, (t, f) in enumerate(points):
    if not any((t2 <= t and f2 <= f) and (t2 < t or f2 < f) for j, (t2, f2) in enumerate(points) if j != i):
      out.append(i)
  return out


def plot(arms, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7.5, 5))
  pts = [(a.res["ms"], a.res["fd"]) for a in arms]
  front = set(pareto(pts))
  dense = sorted([(a.res["ms"], a.res["fd"]) for a in arms if a.name.startswith("dense ") and "steps" in a.name])
  ax.plot(*zip(*dense), "k--", lw=1, label="dense, 4/8/16 steps")
  for i, a in enumerate(arms):
    style = "*" if a.name.startswith("composed") else ("s" if a.note else "o")
    ax.scatter(a.res["ms"], a.res["fd"], marker=style, s=110 if style == "*" else 45,
               edgecolors="red" if i in front else "none", linewidths=1.5)
    ax.annotate(a.name, (a.res["ms"], a.res["fd"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
  ax.set_xscale("log")
  ax.set_xlabel("sampling wall-clock, ms / image (log)")
  ax.set_ylabel("FD, classifier features (lower is better)")
  ax.set_title("quality vs compute (red edge: Pareto front)", fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(args, config, arms, summary, secs, total, machine, date, path_md, path_png):
  bs = int(config.train.batch_size)
  cc = config.compose
  s = config.sample
  ref = next(a for a in arms if a.name == f"dense {int(s.steps)} steps")
  comp = next(a for a in arms if a.name == "composed (all four)")
  lines = ["# Quality vs compute: every method alone and all composed" + (" (SMOKE: tiny budgets, numbers meaningless)" if args.smoke else ""), ""]
  lines.append(f"Date: {date}. Machine: {machine}.")
  lines.append(f"Command: `python experiments/frontier.py {' '.join(sys.argv[1:])}`. Config: configs/quickstart_composed.py "
               f"(digits 16x16, DiT width {config.model.hidden_size}, depth {config.model.depth}, {config.model.num_heads} heads, "
               f"base patch {config.model.patch_size}); batch {bs}; total training steps per arm {total} = "
               f"{total * bs} images (recipe: dense {cc.dense_steps} + PPFlow {cc.ppflow_steps} + routing {cc.routing_steps} + "
               f"grouped {cc.grouped_steps}); selectors {cc.selector_steps} steps of {cc.selector_batch} labels, step set "
               f"{tuple(config.selector.step_set)}. Sampling {s.method}, {s.steps} steps, CFG {s.cfg_scale}. PPFlow stages "
               f"{tuple(tuple(x) for x in cc.stages)}; routing target {config.routing.target}, bins {tuple(config.routing.bins)}; "
               f"grouped N = {config.grouped.num_groups}, k = {config.grouped.k}.")
  lines.append(f"Quality: FD / class accuracy of {args.num_eval} class-balanced samples (classifier features, not Inception "
               f"FID). Wall-clock: {args.time_n} images per call, median of {args.reps} interleaved repetitions after "
               "compilation (selector arms include their per-step-count grouping). FLOPs: analytic, adaflow.compose.flops.")
  lines.append("")
  lines.append("| arm | training images | avg steps | GFLOPs / image | FLOPs vs dense | ms / image | speed-up vs dense | FD | class acc |")
  lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for a in arms:
    r = a.res
    lines.append(f"| {a.name} | {a.images} | {r['steps']:.2f} | {r['flops'] / 1e9:.4f} | {r['flops'] / ref.res['flops']:.3f} | "
                 f"{r['ms']:.3f} | {ref.res['ms'] / r['ms']:.2f}x | {r['fd']:.3f} | {r['acc']:.3f} |")
  lines.append("")
  speed = ref.res["ms"] / comp.res["ms"]
  dense_pts = sorted([a for a in arms if a.name.startswith("dense ") and "steps" in a.name], key=lambda a: a.res["ms"])
  eq = [a for a in dense_pts if a.res["fd"] <= comp.res["fd"] * 1.05]
  lines.append("## Goal: composed >= 3x faster than dense at equal quality")
  lines.append("")
  lines.append(f"Composed vs dense at {s.steps} steps: {speed:.2f}x faster (FLOPs {comp.res['flops'] / ref.res['flops']:.3f} of dense), "
               f"FD {comp.res['fd']:.3f} vs {ref.res['fd']:.3f} ({100 * (comp.res['fd'] / ref.res['fd'] - 1):+.1f}%), "
               f"class accuracy {comp.res['acc']:.3f} vs {ref.res['acc']:.3f}.")
  if eq:
    best = eq[0]
    lines.append(f"Fastest dense setting with FD within 5% of the composed FD or better: {best.name} "
                 f"({best.res['ms']:.3f} ms/image, FD {best.res['fd']:.3f}); composed is {best.res['ms'] / comp.res['ms']:.2f}x "
                 "faster than it.")
  else:
    lines.append("No dense setting measured here is as bad as the composed model's FD: the composed model loses quality; "
                 "compare at the FD it reaches (table).")
  met = speed >= 3.0 and comp.res["fd"] <= ref.res["fd"] * 1.05
  lines.append(f"**Goal {'met' if met else 'not met'}** at this budget (criterion: >= 3x the {s.steps}-step dense wall-clock "
               "with FD within 5% of it).")
  lines.append("")
  lines.append("## What each method contributes (recipe stages, cumulative; each row vs the one above)")
  lines.append("")
  lines.append("| stage | training images so far | ms / image | x faster than previous | FLOPs vs previous | FD |")
  lines.append("|---|---:|---:|---:|---:|---:|")
  chain = [a for a in arms if a.note] + [comp]
  prev = next(a for a in arms if a.name == f"dense {int(s.steps)} steps")
  prev_name = "dense (T images)"
  for a in chain:
    lines.append(f"| {a.name} (after {prev_name}) | {a.images} | {a.res['ms']:.3f} | {prev.res['ms'] / a.res['ms']:.2f}x | "
                 f"{a.res['flops'] / prev.res['flops']:.3f} | {a.res['fd']:.3f} |")
    prev, prev_name = a, a.name
  lines.append("")
  if summary.get("prune"):
    lines.append("Composed pruning (finest-stage view): " + "; ".join(
        f"group {g['group']} t [{g['t_range'][0]:.2f}, {g['t_range'][1]:.2f}) {g['flops_fraction']:.2f} F counts {g['counts']}"
        for g in summary["prune"]["groups"]))
    lines.append("")
  lines.append("Training seconds (this run; reused stages not counted): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
  lines.append("")
  lines.append(f"![frontier]({os.path.basename(path_png)})")
  text = "\n".join(lines) + "\n"
  with open(path_md, "w") as f:
    f.write(text)
  print(text)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--work", default="/tmp/adaflow_frontier")
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "frontier.md"))
  ap.add_argument("--cache", default="/tmp/.adaflow_cache")
  ap.add_argument("--reuse", action="store_true", help="keep finished trainings in --work (default: start fresh)")
  ap.add_argument("--smoke", action="store_true", help="tiny budgets: checks the pipeline, numbers mean nothing")
  ap.add_argument("--num_eval", type=int, default=500)
  ap.add_argument("--time_n", type=int, default=100, help="images per timed call (= --chunk: no extra compile)")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--chunk", type=int, default=100, help="generation batch for the quality samples")
  args = ap.parse_args()
  if args.smoke:
    args.num_eval, args.time_n, args.reps = SMOKE["num_eval"], SMOKE["time_n"], SMOKE["reps"]
    args.chunk = SMOKE["time_n"]
    if args.out == ap.get_default("out"):
      args.out = os.path.join(args.work, "frontier_smoke.md")     # smoke numbers stay out of results/
  from experiments.common import machine_line, utc_now
  machine, date = machine_line(), utc_now()
  t0 = time.time()
  log = _log(t0)
  if not args.reuse and os.path.exists(args.work):
    shutil.rmtree(args.work)
  os.makedirs(args.work, exist_ok=True)
  config = build_config(args)
  summary, dirs, secs, total = train_all(config, args.work, log)

  info = data_lib.get_info(config.data)
  labels = balanced_labels(args.num_eval, info.num_classes)
  time_labels = balanced_labels(args.time_n, info.num_classes)
  arms = build_arms(config, summary, dirs, total, args, time_labels)
  clf = get_classifier(config.data, args.cache, seed=0, log=log)
  for a in arms:
    imgs, steps = a.sample_fn(labels, jax.random.PRNGKey(1234), args.chunk)
    q = evaluate_samples(clf, imgs, labels)
    a.res.update(fd=float(q["fd"]), acc=float(q["class_acc"]), steps=float(np.mean(steps)))
    a.steps_per_image = steps
    log(f"{a.name}: FD {q['fd']:.3f}, acc {q['class_acc']:.3f}, avg steps {np.mean(steps):.2f}")
  for a in arms:
    a.time_fn()                        # compile every timed shape
  for r in range(args.reps):
    for a in arms:
      t = time.perf_counter()
      a.time_fn()
      a.times.append(time.perf_counter() - t)
  for a in arms:
    a.res["ms"] = 1000 * float(np.median(a.times)) / args.time_n
  finish_flops(arms)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  png = os.path.splitext(args.out)[0] + ".png"
  plot(arms, png)
  write_report(args, config, arms, summary, secs, total, machine, date, args.out, png)
  with open(os.path.join(args.work, "frontier.json"), "w") as f:
    json.dump({a.name: dict(a.res, times=a.times, images=a.images) for a in arms}, f, indent=1)
  log(f"done in {time.time() - t0:.0f}s")


def finish_flops(arms):
  for a in arms:
    if a.flops is None:
      a.flops = a.flops_fn(a.steps_per_image)
    a.res["flops"] = float(a.flops)


if __name__ == "__main__":
  main()
