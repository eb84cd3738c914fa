"""PPFlow vs the dense DiT, side by side in one run (arXiv 2506.23543).

    ADAFLOW_BENCH_LOCKED=1 flock /tmp/adaflow-bench.lock python -m experiments.bench_ppflow [--steps 400 --batch 64]

Setting: embedded digits 16x16, the quick start DiT (width 128, depth 4, 4 heads) with base patch
2 (64 tokens in the fine stage; 16 in the 2x2 stage, 32 in the 1x2 stage). With the quick start's
patch 4 the coarse stage would have 4 tokens and per-call overhead would hide the token savings.
Models, all with the same width/depth, batch and number of training steps:
  dense      one-level DiT (objective flow_matching)
  ppflow2    2 levels from scratch;  ppflow3    3 levels from scratch
  ppflow2-ft / ppflow3-ft   converted from the trained dense EMA weights (convert_dense_params)
             and fine-tuned for --ft_fraction of the steps.
Measured: XLA FLOPs per network call for each stage (cost_analysis, batch 1), sampling wall-clock
per image at equal step counts (timed repetitions interleaved across models), training images/s,
FD and class accuracy (adaflow.eval classifier features; not Inception FID).
Writes experiments/results/ppflow.md (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adaflow.eval import evaluate_samples, get_classifier
from adaflow.eval.classifier import cache_dir
from adaflow.eval.quality import real_vs_real_fd
from adaflow.models.ppflow import convert_params_for
from adaflow.train.loop import Trainer, load_trainer_and_params, train
from experiments.common import RESULTS, load_config, machine_line, utc_now


def bench_config(name: str, args):
  c = load_config(name)
  c.model.patch_size = 2
  c.train.steps = args.steps
  c.train.batch_size = args.batch
  c.train.warmup_steps = max(1, min(200, args.steps // 10))
  c.train.ckpt_every = args.steps
  c.train.log_every = max(1, args.steps // 10)
  c.train.final_samples = False
  c.eval.at_end = False
  c.eval.num_samples = args.eval_samples
  c.sample.steps = args.sample_steps
  c.sample.method = "heun"
  return c


def train_images_per_second(workdir: str) -> float:
  """Mean images/s over the logged intervals after the first one (which includes compilation)."""
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  ips = [r["images_per_second"] for r in rows if r.get("kind") == "train" and "images_per_second" in r]
  return float(np.mean(ips[1:] if len(ips) > 1 else ips))


def token_cost_ratio(schedule) -> float:
  """Time-averaged token count of a PPFlow schedule relative to its last (finest) stage: the paper's
  theoretical cost ratio (0.625 for 2 levels, 0.5 for 3 levels with the default boundaries). Counts
  only the linear layers' token-proportional cost; attention is quadratic in N and shrinks faster."""
  n_fine = schedule.tokens(schedule.num_stages - 1)
  return float(sum(span * schedule.tokens(s) / n_fine for s, span in enumerate(schedule.spans)))


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_ppflow",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--ft_fraction", type=float, default=0.25)
  ap.add_argument("--eval_samples", type=int, default=500)
  ap.add_argument("--sample_steps", type=int, default=16, help="Heun steps for evaluation and timing")
  ap.add_argument("--timing_batch", type=int, default=32)
  ap.add_argument("--timing_reps", type=int, default=5)
  ap.add_argument("--ft_models", default="ppflow3", help="comma list of ppflow2,ppflow3 to fine-tune from dense")
  ap.add_argument("--workdir", default="/tmp/adaflow_bench_ppflow")
  ap.add_argument("--keep", action="store_true", help="reuse finished runs in --workdir (train() resumes them)")
  ap.add_argument("--out", default=os.path.join(RESULTS, "ppflow.md"))
  args = ap.parse_args()
  t_start = time.time()
  machine = machine_line()

  if os.path.exists(args.workdir) and not args.keep:
    shutil.rmtree(args.workdir)
  os.makedirs(args.workdir, exist_ok=True)
  quiet = lambda msg: None
  cfgs = {"dense": bench_config("quickstart", args), "ppflow2": bench_config("quickstart_ppflow2", args),
          "ppflow3": bench_config("quickstart_ppflow3", args)}
  cfgs["dense"].objective = "flow_matching"
  ft_steps = max(1, int(round(args.ft_fraction * args.steps)))

  # ---- training ----------------------------------------------------------------------------
  results, wall = {}, {}
  for name in ("dense", "ppflow2", "ppflow3"):
    t0 = time.time()
    train(cfgs[name], os.path.join(args.workdir, name), log=quiet)
    wall[name] = time.time() - t0
    results[name] = {"train_img_s": train_images_per_second(os.path.join(args.workdir, name)),
                     "train_steps": args.steps}
    print(f"trained {name}: {wall[name]:.0f}s, {results[name]['train_img_s']:.0f} img/s", flush=True)
  _, dense_params, _ = load_trainer_and_params(os.path.join(args.workdir, "dense"))
  dense_params = jax.device_get(dense_params)
  for base in [m for m in args.ft_models.split(",") if m]:
    name = f"{base}-ft"
    c = cfgs[base].copy_and_resolve_references()
    c.train.steps = ft_steps
    c.train.warmup_steps = max(1, ft_steps // 10)
    c.train.ckpt_every = ft_steps
    c.train.log_every = max(1, ft_steps // 5)
    tr = Trainer(c, os.path.join(args.workdir, name), log=quiet)
    init = convert_params_for(tr.objective, dense_params, jax.random.PRNGKey(c.seed))
    t0 = time.time()
    train(c, os.path.join(args.workdir, name), init_params=init, log=quiet)
    wall[name] = time.time() - t0
    results[name] = {"train_img_s": train_images_per_second(os.path.join(args.workdir, name)),
                     "train_steps": f"{args.steps} dense + {ft_steps}"}
    print(f"fine-tuned {name}: {wall[name]:.0f}s", flush=True)

  # ---- sampling wall-clock (interleaved) and quality, one compiled sampler per architecture ---
  loaded = {}
  for name in results:
    tr, params, _ = load_trainer_and_params(os.path.join(args.workdir, name))
    loaded[name] = (tr, params)
  gens = {}
  for arch in ("dense", "ppflow2", "ppflow3"):
    tr = loaded[arch][0]
    gens[arch] = jax.jit(lambda p, r, y, o=tr.generator(), s=tr.config.sample: o.generate(
        p, r, y, steps=args.sample_steps, method="heun", cfg_scale=s.cfg_scale))
  n_eval = args.eval_samples - args.eval_samples % args.timing_batch
  eval_labels = np.arange(n_eval) % 10
  batches = [jnp.asarray(eval_labels[i:i + args.timing_batch], jnp.int32) for i in range(0, n_eval, args.timing_batch)]
  for name in results:                                         # compile + warm up
    jax.block_until_ready(gens[name.split("-")[0]](loaded[name][1], jax.random.PRNGKey(0), batches[0]))
  images = {n: [] for n in results}
  times = {n: [] for n in results}
  for i, y in enumerate(batches):                              # interleaved: every batch, every model
    for name in results:
      t0 = time.perf_counter()
      out = jax.block_until_ready(gens[name.split("-")[0]](loaded[name][1], jax.random.PRNGKey(1000 + i), y))
      times[name].append(time.perf_counter() - t0)
      images[name].append(np.asarray(out))
  clf = get_classifier(cfgs["dense"].data, cache_dir(cfgs["dense"], args.workdir), log=quiet)
  for name in results:
    ev = evaluate_samples(clf, np.concatenate(images[name]), eval_labels)
    results[name].update(fd=ev["fd"], class_acc=ev["class_acc"])
    print(f"eval {name}: FD {ev['fd']:.3f} acc {ev['class_acc']:.3f}", flush=True)
  ms_per_image = {n: 1000 * float(np.median(v)) / args.timing_batch for n, v in times.items()}
  floor = real_vs_real_fd(clf, cfgs["dense"].data, n_eval)

  # ---- FLOPs per network call, per stage (the compiled stage networks are also timed below) --
  h, w, ch = loaded["dense"][0].info.image_shape
  bc = 2 * args.timing_batch                                   # the CFG batch of one sampler call
  xb, tb, yb = jnp.zeros((bc, h, w, ch)), jnp.full((bc,), 0.5), jnp.zeros((bc,), jnp.int32)
  call_fns, stage_flops = {}, {}
  for arch in ("dense", "ppflow2", "ppflow3"):
    obj, params = loaded[arch][0].objective, loaded[arch][1]
    n_st = 1 if arch == "dense" else obj.schedule.num_stages
    stage_flops[arch] = []
    for s in range(n_st):
      compiled = jax.jit(lambda p, x, t, y, o=obj, s=s: o.apply(p, x, t, y, stage=s)).lower(params, xb, tb, yb).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      stage_flops[arch].append(float(cost["flops"]) / bc)      # per image
      call_fns[(arch, s)] = (compiled, params)
  grid_steps = {"dense": [args.sample_steps]}
  for arch in ("ppflow2", "ppflow3"):
    sch = loaded[arch][0].objective.spec.schedule
    per = sch.step_stages(np.linspace(0, 1, args.sample_steps + 1))
    grid_steps[arch] = [per.count(s) for s in range(sch.num_stages)]
  sample_flops = {n: sum(f * k for f, k in zip(stage_flops[n], grid_steps[n])) for n in stage_flops}

  # ---- per-stage network wall-clock (explains FLOPs vs wall-clock) -------------------------
  call_t = {k: [] for k in call_fns}
  for rep in range(args.timing_reps):
    for k, (f, params) in call_fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(params, xb, tb, yb))
      call_t[k].append(time.perf_counter() - t0)
  call_ms = {k: 1000 * float(np.median(v)) for k, v in call_t.items()}

  # ---- report ------------------------------------------------------------------------------
  theory = {"dense": 1.0}
  for name in ("ppflow2", "ppflow3"):
    theory[name] = token_cost_ratio(loaded[name][0].objective.spec.schedule)
  date = utc_now()
  cmd = "python -m experiments.bench_ppflow " + " ".join(sys.argv[1:])
  if os.environ.get("ADAFLOW_BENCH_LOCKED"):
    cmd = "ADAFLOW_BENCH_LOCKED=1 flock /tmp/adaflow-bench.lock " + cmd
  lines = [
      "# PPFlow vs dense DiT (arXiv 2506.23543)", "",
      f"Machine: {machine}. Date: {date}.", f"Command: `{cmd.strip()}`", "",
      f"Setting: embedded digits 16x16x1, DiT width 128, depth 4, 4 heads, base patch 2 (64 / 32 / 16 tokens "
      f"for 2x2 / 2x4 / 4x4-pixel patches), bfloat16 matmuls. Training: {args.steps} steps x batch {args.batch} "
      f"for every from-scratch model (a small budget, chosen to keep the whole run near 10 minutes; the quick "
      f"start trains 2500 x 128), logit-normal t (PPFlow draws it stratified per stage, the same distribution). "
      f"Fine-tuned models: converted from the trained dense EMA weights, then {ft_steps} more steps "
      f"({args.ft_fraction:.0%} of the budget). Sampling: Heun, {args.sample_steps} steps, CFG 3.0 (every stage), "
      f"batch {args.timing_batch} (wall-clock: median over the {n_eval // args.timing_batch} evaluation batches, "
      f"models interleaved batch by batch); quality on {n_eval} class-balanced samples (FD = Frechet distance "
      f"of the digits classifier's features, not Inception FID; real-vs-real floor at this size: {floor:.3f}).", "",
      "| model | train img/s | sampling ms/image | speed-up | XLA FLOPs/sample (ratio) | theory token ratio | FD | class acc |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name in results:
    arch = name.split("-")[0]
    r = results[name]
    lines.append(
        f"| {name} | {r['train_img_s']:.0f} | {ms_per_image[arch]:.2f} | "
        f"{ms_per_image['dense'] / ms_per_image[arch]:.2f}x | {sample_flops[arch] / 1e6:.1f}M "
        f"({sample_flops[arch] / sample_flops['dense']:.3f}) | {theory[arch]:.3f} | {r['fd']:.3f} | {r['class_acc']:.3f} |")
  lines += ["", "XLA FLOPs per network call (one image, cost_analysis of the compiled stage network):", "",
            "| model | stage | patch (px) | tokens | FLOPs/call | vs dense | steps of the grid |", "|---|---|---|---|---|---|---|"]
  lines.append(f"| dense | 0 | 2x2 | 64 | {stage_flops['dense'][0] / 1e6:.2f}M | 1.000 | {args.sample_steps} |")
  for name in ("ppflow2", "ppflow3"):
    sch = loaded[name][0].objective.spec.schedule
    for s in range(sch.num_stages):
      ph, pw = sch.patch_shapes[s]
      lines.append(f"| {name} | {s} (t <= {sch.t_ends[s]}) | {ph}x{pw} | {sch.tokens(s)} | "
                   f"{stage_flops[name][s] / 1e6:.2f}M | {stage_flops[name][s] / stage_flops['dense'][0]:.3f} | "
                   f"{grid_steps[name][s]} |")
  lines += ["", f"Per-call wall-clock at batch {bc} (the CFG batch), interleaved, median of {args.timing_reps}:", "",
            "| network | ms/call | vs dense | FLOPs vs dense |", "|---|---|---|---|"]
  for (name, s), ms in call_ms.items():
    fl = stage_flops[name][s] / stage_flops["dense"][0]
    lines.append(f"| {name} stage {s} ({loaded[name][0].objective.spec.schedule.tokens(s) if name != 'dense' else 64} tokens) | {ms:.2f} | {ms / call_ms[('dense', 0)]:.3f} | {fl:.3f} |")
  lines += ["", "Training wall-clock (s, including compilation): " +
            ", ".join(f"{k} {v:.0f}" for k, v in wall.items()) + f". Total benchmark time: {time.time() - t_start:.0f} s."]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump(dict(results=results, ms_per_image=ms_per_image, stage_flops=stage_flops, sample_flops=sample_flops,
                   call_ms={f"{k[0]}/{k[1]}": v for k, v in call_ms.items()}, theory=theory, fd_floor=floor,
                   args=vars(args)), f, indent=2)


if __name__ == "__main__":
  main()
