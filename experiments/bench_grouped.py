"""Benchmark: timestep-grouped train-then-prune vs the dense base at the same training images.

    flock /tmp/adaflow-bench.lock python -m experiments.bench_grouped [--out experiments/results/grouped.md]

Digits quick-start model (16x16, patch 4, width 128, depth 4, 4 heads), with a SMALLER step budget
than the quick start so the whole benchmark fits in ~10-20 minutes on a shared 2-core CPU:
batch 64, TOTAL = 480 steps for every arm (30,720 training images).
  dense          : 480 steps on all t
  stage-1 base   : the first 300 steps of train-then-prune (reference only, fewer images)
  TDC data/noise : 300 steps dense + pruning (N = 4, k = 0.5, Taylor importance, importance
                   proposer, 2 rounds x 2 proposals) + 45 steps per group (4 x 45 = 180)
                   `largest` = data (full model near t = 1) or noise (full model near t = 0)
  prune-only     : the TDC structures with the sliced stage-1 weights, no stage 2
  random prune   : random proposer (same rounds / proxy), no stage 2 (ablation of the proposer)
Sampling: Heun, 16 steps, CFG 3 (quick-start settings). FLOPs are analytic network FLOPs per image
(adaflow.prune.budget, checked against XLA in tests). Wall-clock: per batch of 250 images, the
arms timed in interleaved repetitions after compilation.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import jax
import numpy as np

from adaflow import data as data_lib
from adaflow.eval import evaluate_samples, get_classifier
from adaflow.models.grouped import group_key
from adaflow.methods import generator_for
from adaflow.models.dit import dit_from_config
from adaflow.parallel import make_mesh
from adaflow.prune import budget as budget_lib
from adaflow.pipelines.grouped import (grouped_generator, prune, run_grouped,
                                    sampling_summary)
from adaflow.prune.slicing import Structure, slice_params
from adaflow.flow.driver import balanced_labels, make_generate_fn
from adaflow.train.loop import train
from adaflow.train.loop import load_params
from experiments.common import RESULTS, load_config, machine_line, utc_now


def base_config(args):
  c = load_config("quickstart")
  c.train.batch_size = args.batch
  c.train.warmup_steps = 50
  c.train.ckpt_every = 10000
  c.train.log_every = 50
  c.train.final_samples = False
  c.eval.at_end = False
  c.eval.cache_dir = args.cache
  return c


def grouped_cfg(args, largest, proposer="importance", stage2=None, k=0.5):
  c = base_config(args)
  c.grouped.enabled = True   # `adaflow train` runs stage 1, pruning, stage 2
  g = c.grouped
  g.num_groups, g.k, g.largest = 4, k, largest
  g.stage1_steps, g.stage2_steps = args.stage1, args.stage2 if stage2 is None else stage2
  g.stage2_lr, g.stage2_warmup_steps = 3e-4, 10
  g.rounds, g.proposals_per_round, g.proxy_samples = args.rounds, args.proposals, 128
  g.importance, g.proposer = "taylor", proposer
  return c


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_grouped", description=__doc__.split("\n\n")[0])
  ap.add_argument("--work", default="/tmp/adaflow_bench_grouped")
  ap.add_argument("--out", default=os.path.join(RESULTS, "grouped.md"))
  ap.add_argument("--cache", default="/tmp/.adaflow_cache")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--stage1", type=int, default=300)
  ap.add_argument("--stage2", type=int, default=45)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--proposals", type=int, default=2)
  ap.add_argument("--num_eval", type=int, default=500)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--extra_k", type=float, default=None,
                  help="also run TDC (largest=data) with this smaller k, to see where the FLOPs bar is reached")
  args = ap.parse_args()
  machine = machine_line()
  total = args.stage1 + 4 * args.stage2
  t_start = time.time()
  os.makedirs(args.work, exist_ok=True)
  log = lambda m: print(f"[bench {time.time() - t_start:6.0f}s] {m}", flush=True)
  timings = {}

  # ---- dense baseline, whole budget -------------------------------------------------------
  dense_cfg = base_config(args)
  dense_cfg.train.steps = total
  t0 = time.time()
  train(dense_cfg, os.path.join(args.work, "dense"))
  timings["dense train s"] = time.time() - t0
  log(f"dense trained {total} steps in {timings['dense train s']:.0f}s")

  # ---- train-then-prune, both orientations (stage 1 shared) -------------------------------
  wd = {o: os.path.join(args.work, f"tdc_{o}") for o in ("data", "noise")}
  t0 = time.time()
  run_grouped(grouped_cfg(args, "data"), wd["data"])
  timings["tdc data s"] = time.time() - t0
  if not os.path.exists(os.path.join(wd["noise"], "stage1")):
    shutil.copytree(os.path.join(wd["data"], "stage1"), os.path.join(wd["noise"], "stage1"))
  t0 = time.time()
  run_grouped(grouped_cfg(args, "noise"), wd["noise"])
  timings["tdc noise s (stage 1 reused)"] = time.time() - t0
  if args.extra_k is not None:
    wd["extra"] = os.path.join(args.work, f"tdc_data_k{args.extra_k:g}")
    if not os.path.exists(os.path.join(wd["extra"], "stage1")):
      shutil.copytree(os.path.join(wd["data"], "stage1"), os.path.join(wd["extra"], "stage1"))
    t0 = time.time()
    run_grouped(grouped_cfg(args, "data", k=args.extra_k), wd["extra"])
    timings[f"tdc data k={args.extra_k:g} s (stage 1 reused)"] = time.time() - t0
  stage1_params = load_params(os.path.join(wd["data"], "stage1"))
  rnd_dir = os.path.join(args.work, "random_prune")
  rnd_path = os.path.join(rnd_dir, "result.json")
  t0 = time.time()
  if os.path.exists(rnd_path):
    rnd_result = json.load(open(rnd_path))
  else:
    rnd_result = prune(grouped_cfg(args, "data", "random"), stage1_params, rnd_dir)
  timings["random prune s"] = time.time() - t0

  # ---- the arms -------------------------------------------------------------------------------
  cfg = base_config(args)
  info = data_lib.get_info(cfg.data)
  dense_model = dit_from_config(cfg.model, info.image_shape, info.num_classes)
  base_flops = budget_lib.model_flops(dense_model)
  arms = {}   # name -> (generator, params, flops fraction, note)
  dense_gen = generator_for(cfg, info)
  arms[f"dense ({total} steps)"] = (dense_gen, load_params(os.path.join(args.work, "dense")), 1.0)
  arms[f"stage-1 base ({args.stage1} steps)"] = (dense_gen, stage1_params, 1.0)
  results = {}
  for o in [o for o in ("data", "noise", "extra") if o in wd]:
    res = json.load(open(os.path.join(wd[o], "prune", "result.json")))
    results[o] = res
    gcfg = grouped_cfg(args, "data", k=args.extra_k) if o == "extra" else grouped_cfg(args, o)
    obj = grouped_generator(gcfg, res)
    frac = sampling_summary(gcfg, res)["flops_fraction"]
    tuned = {group_key(i): load_params(os.path.join(wd[o], f"group_{i}")) for i in range(4)}
    if o == "extra":
      arms[f"TDC largest=data k={args.extra_k:g}"] = (obj, tuned, frac)
      continue
    sliced = {group_key(gr["group"]): slice_params(stage1_params, dense_model, Structure.from_json(gr["structure"]))
              for gr in res["groups"]}
    arms[f"TDC largest={o}"] = (obj, tuned, frac)
    arms[f"prune-only largest={o}"] = (obj, sliced, frac)
  results["random"] = rnd_result
  robj = grouped_generator(grouped_cfg(args, "data"), rnd_result)
  rsliced = {group_key(gr["group"]): slice_params(stage1_params, dense_model, Structure.from_json(gr["structure"]))
             for gr in rnd_result["groups"]}
  arms["random-prune-only largest=data"] = (robj, rsliced, sampling_summary(cfg, rnd_result)["flops_fraction"])

  # ---- quality --------------------------------------------------------------------------------
  mesh = make_mesh(cfg.mesh)
  clf = get_classifier(cfg.data, args.cache, seed=0, log=log)
  labels = balanced_labels(args.num_eval, info.num_classes)
  s = cfg.sample
  fns = {}
  quality = {}
  for name, (obj, params, frac) in arms.items():
    fn = make_generate_fn(obj, mesh, steps=s.steps, method=s.method, cfg_scale=s.cfg_scale)
    fns[name] = fn
    imgs = []
    for i, a in enumerate(range(0, args.num_eval, 250)):
      y = jax.numpy.asarray(labels[a:a + 250])
      imgs.append(np.asarray(fn(params, jax.random.fold_in(jax.random.PRNGKey(1234), i), y)))
    q = evaluate_samples(clf, np.concatenate(imgs), labels)
    quality[name] = q
    log(f"{name}: FD {q['fd']:.3f} acc {q['class_acc']:.3f} FLOPs {frac:.3f}")

  # ---- wall-clock, interleaved ----------------------------------------------------------------
  y = jax.numpy.asarray(labels[:250])
  wall = {n: [] for n in arms}
  for r in range(args.reps):
    for name, (obj, params, frac) in arms.items():
      if name.startswith("stage-1") or name.startswith("prune-only") or name.startswith("random"):
        continue   # same compiled structure as another arm
      t0 = time.time()
      jax.block_until_ready(fns[name](params, jax.random.PRNGKey(r), y))
      wall[name].append(time.time() - t0)

  # ---- table --------------------------------------------------------------------------------
  nfe = 2 * s.steps * (2 if s.cfg_scale != 1.0 else 1)
  rows = []
  dense_wall = np.median(wall[f"dense ({total} steps)"])
  for name, (obj, params, frac) in arms.items():
    w = f"{np.median(wall[name]):.3f} ({np.median(wall[name]) / dense_wall:.2f}x)" if wall[name] else "-"
    rows.append(f"| {name} | {frac:.3f} | {frac * base_flops * nfe / 1e9:.3f} | {w} | {quality[name]['fd']:.3f} | "
                f"{quality[name]['class_acc']:.3f} |")
  struct_rows = []
  for key, res in results.items():
    for gr in res["groups"]:
      struct_rows.append(f"| {key} | {gr['group']} | [{gr['t_range'][0]:.3f}, {gr['t_range'][1]:.3f}) | "
                         f"{gr['budget_fraction']:.3f} | {gr['flops_fraction']:.3f} | {gr['counts']} | {gr['proxy']:.4f} |")
  date = utc_now()
  md = [
      "# Timestep-grouped train-then-prune (TDC) vs dense — digits quick-start model", "",
      f"Date: {date}. Machine: {machine}. Wall-clock: interleaved repetitions, median.",
      f"Command: `python -m experiments.bench_grouped {' '.join(sys.argv[1:])}` "
      f"(batch {args.batch}, {total} total steps per arm = {total * args.batch} training images; the quick start "
      "uses 2500 x 128, the same or a smaller budget).",
      f"TDC: stage 1 {args.stage1} steps, N = 4 groups (equal SNR-dB width over [-20, 20] dB), k = 0.5"
      + (f" (and {args.extra_k:g} for one extra arm)" if args.extra_k is not None else "") + ", "
      f"Taylor importance, {args.rounds} rounds x {args.proposals} proposals, proxy = held-out flow loss on 128 "
      f"examples at the group's times, stage 2 {args.stage2} steps per group. Sampling: {s.method}, {s.steps} steps, "
      f"CFG {s.cfg_scale}; FD/accuracy on {args.num_eval} class-balanced samples (classifier-feature FD, not Inception FID).",
      "", "| arm | FLOPs vs dense | GFLOPs / image | wall-clock per 250 images, s | FD | class acc |",
      "|---|---|---|---|---|---|", *rows, "",
      "Chosen structures ([heads, MLP channels] per base block; base = 4 x [4, 512]):", "",
      "| run | group | t range | budget | FLOPs | counts | proxy loss |", "|---|---|---|---|---|---|---|", *struct_rows, "",
      "Timings of the pipeline (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(md))
  with open(os.path.join(args.work, "bench.json"), "w") as f:
    json.dump({"quality": quality, "wall": wall, "timings": timings}, f, indent=1, default=float)
  print("\n".join(md))


if __name__ == "__main__":
  main()
