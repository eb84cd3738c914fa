"""DiffCR token routing vs the dense DiT, side by side in one run (digits 16x16, patch 2: 64 tokens).

    python -m experiments.bench_routing --train-only [--pre 500 --ft 250]
    ADAFLOW_BENCH_LOCKED=1 flock /tmp/adaflow-bench.lock python -m experiments.bench_routing --reuse [same flags]

Two phases: `--train-only` trains every variant (untimed, may run beside other jobs), then the same
command with `--reuse` under the benchmark lock restores the checkpoints and does every timed and
quality measurement side by side.

Protocol (same training budget for every variant): one dense DiT (configs/quickstart_routed.py's
model, width 128, depth 4, patch 2) is trained for `--pre` steps; then each variant is fine-tuned
from it for `--ft` steps through the ordinary loop (`train(..., init_params=...)`, which adds
routers and ratios to the dense parameters):
  dense         : plain flow matching (continued)
  learned-0.75  : DiffCR, learnable ratio per (layer, region), target 0.75, 4 regions
  learned-0.5   : same, target 0.5
  uniform-0.75  : one fixed kept ratio 0.75 everywhere, adaflow's straight-through residual scale
                  (routing.scale="ste"): plain top-k token skipping, non-learned, same mean ratio
  uniform-0.5   : fixed 0.5, as above
  mod-0.75      : Mixture-of-Depths (arXiv 2404.02258): fixed ratio 0.75 and the MLP update
                  multiplied by the router weight (routing.scale="weight", DiffCR's pseudocode)
  mod-0.5       : fixed 0.5, as above
Measured per variant: sampling wall-clock (Heun, `--steps`, CFG, batch `--sample-batch`; median of
interleaved repetitions), XLA FLOPs of sampling (cost_analysis; for learned ratios the inference
program holds a lax.switch over bins, whose cost XLA cannot attribute, so FLOPs are the sum over
the trajectory of the cost_analysis of each block at its snapped bin plus the non-block part),
peak temporary memory of the compiled train step (memory_analysis temp bytes), FD and class
accuracy (adaflow.eval), and the learned ratio table. Writes experiments/results/routing.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adaflow.eval import evaluate_samples, get_classifier
from adaflow.models.routing.ratios import ratio_table, region_index, snapped_table
from adaflow.models.routing.tokens import num_kept, routed_block
from adaflow.models.dit import DiTBlock
from adaflow.flow.driver import balanced_labels, generate_images, make_generate_fn
from adaflow.train.loop import Trainer, train
from experiments.common import RESULTS, load_config, machine_line, utc_now


def variant_config(base, name, args):
  c = base.copy_and_resolve_references()
  c.name = name
  c.train.log_every = 50
  c.train.ckpt_every = 100000
  c.train.final_samples = False
  c.eval.at_end = False
  c.train.batch_size = args.batch
  c.sample.steps = args.steps
  if name == "dense-pre":
    c.objective = "flow_matching"
    c.train.steps = args.pre
    return c
  c.train.steps = args.ft
  c.train.lr = args.ft_lr
  c.train.warmup_steps = 20
  c.train.schedule = "constant"
  if name == "dense":
    c.objective = "flow_matching"
    return c
  c.objective = "routed_flow_matching"
  kind, ratio = name.split("-")
  if kind == "mod":
    c.routing.scale = "weight"
  if kind == "learned":
    c.routing.target = float(ratio)
    c.routing.ratio_lr_scale = args.ratio_lr_scale
  else:
    c.routing.fixed_ratio = float(ratio)
  return c


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def block_flops(model, params, b, n, k) -> float:
  """XLA FLOPs of one routed block (gather k of n tokens, block, scatter) at batch b."""
  blk = DiTBlock(model.hidden_size, model.num_heads, model.head_dim, int(model.hidden_size * model.mlp_ratio),
                 model.dtype)
  bp = {"params": params["params"]["block_0"]}
  x = jnp.zeros((b, n, model.hidden_size))
  c = jnp.zeros((b, model.hidden_size))
  w = jnp.zeros((b, n))
  fn = jax.jit(lambda p, x, c, w: blk.apply(p, x, c, method=lambda m, x, c: routed_block(m, x, c, w, k, "ste")))
  return flops_of(fn.lower(bp, x, c, w).compile())


def sampler_flops(tr, params, table, args, dense_gen_flops, dense_forward_flops) -> float:
  """FLOPs of sampling one batch: dense program minus the dense blocks plus each layer's block at
  its snapped bin in the region of each network evaluation (Heun: 2 evaluations per step but the
  last, each doubled by CFG)."""
  from adaflow.flow.samplers import time_grid
  model = tr.objective.model
  b = 2 * args.sample_batch                       # CFG doubles the batch
  n = (tr.info.image_shape[0] // model.patch_size) * (tr.info.image_shape[1] // model.patch_size)
  per_k = {}
  dense_block = block_flops(model, params, b, n, n)
  grid = time_grid(args.steps)
  times = []
  for t0, t1 in zip(grid[:-1], grid[1:]):
    times += [t0, t1]                              # Heun: evaluations at t0 and t1
  spec = tr.objective.spec.routing
  # XLA's cost_analysis counts a while loop (the sampler's lax.scan) body once: one Heun step.
  total = dense_gen_flops * args.steps
  for t in times:
    r = int(region_index(jnp.float32(t), spec.boundaries))
    for layer in range(table.shape[0]):
      k = num_kept(float(table[layer, r]), n)
      if k not in per_k:
        per_k[k] = block_flops(model, params, b, n, k)
      total += per_k[k] - dense_block
  return total


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_routing", description=__doc__.split("\n\n")[0])
  ap.add_argument("--pre", type=int, default=500)
  ap.add_argument("--ft", type=int, default=250)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--ft-lr", type=float, default=5e-4)
  ap.add_argument("--ratio-lr-scale", type=float, default=20.0)
  ap.add_argument("--steps", type=int, default=8)
  ap.add_argument("--sample-batch", type=int, default=250)
  ap.add_argument("--num-eval", type=int, default=500)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--workdir", default="/tmp/bench_routing")
  ap.add_argument("--train-only", action="store_true",
                  help="only train the variants into --workdir and compile their programs (untimed; run the "
                       "measurement later with --reuse under the benchmark lock)")
  ap.add_argument("--reuse", action="store_true",
                  help="keep --workdir: finished runs are restored from their checkpoints, not retrained")
  ap.add_argument("--out", default=os.path.join(RESULTS, "routing.md"))
  args = ap.parse_args()
  machine = machine_line()
  t_start = time.time()
  # Identical programs (the train step compiled again for memory_analysis, the two learned
  # variants' samplers) are compiled once: persistent compilation cache for this run.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir + "_jaxcache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if not args.reuse:
    shutil.rmtree(args.workdir, ignore_errors=True)
    shutil.rmtree(args.workdir + "_jaxcache", ignore_errors=True)
  base = load_config("quickstart_routed")
  quiet = lambda msg: None

  # 1. dense pre-training, then fine-tunes from it (same budget for every variant).
  pre_cfg = variant_config(base, "dense-pre", args)
  t0 = time.time()
  pre = train(pre_cfg, os.path.join(args.workdir, "dense-pre"), log=quiet)
  print(f"dense pre-training {args.pre} steps: {time.time() - t0:.0f}s", flush=True)
  dense_params = jax.device_get(pre.ema_params)
  names = ["dense", "learned-0.75", "learned-0.5", "uniform-0.75", "uniform-0.5", "mod-0.75", "mod-0.5"]
  runs = {}
  for name in names:
    cfg = variant_config(base, name, args)
    t0 = time.time()
    st = train(cfg, os.path.join(args.workdir, name), init_params=dense_params, log=quiet)
    tr = Trainer(cfg, os.path.join(args.workdir, name), log=quiet)
    runs[name] = dict(cfg=cfg, tr=tr, params=st.ema_params, train_s=time.time() - t0)
    print(f"{name}: fine-tuned {args.ft} steps in {time.time() - t0:.0f}s", flush=True)

  # 2. compiled programs: sampling (one batch) and the train step (for memory).
  labels = jnp.asarray(balanced_labels(args.sample_batch, 10))
  rng = jax.random.PRNGKey(3)
  for name, r in runs.items():
    tr, s = r["tr"], r["cfg"].sample
    fn = make_generate_fn(tr.generator(), tr.mesh, steps=s.steps, method=s.method, cfg_scale=s.cfg_scale)
    t0 = time.time()
    compiled = fn.lower(r["params"], rng, labels).compile()
    r["compile_s"] = time.time() - t0
    r["gen"] = compiled
    r["gen_flops_xla"] = flops_of(compiled)
    step = tr.jitted_step()
    state_abs = tr.abstract_state
    batch_abs = {"image": jax.ShapeDtypeStruct((args.batch,) + tuple(tr.info.image_shape), jnp.float32),
                 "label": jax.ShapeDtypeStruct((args.batch,), jnp.int32)}
    mem = step.lower(state_abs, batch_abs).compile().memory_analysis()
    r["train_temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0))
    if name != "dense":
      spec = tr.objective.spec.routing
      r["table"] = ratio_table(r["params"], spec)
      r["snapped"] = snapped_table(r["table"], spec)

  if args.train_only:
    return   # the compiled programs are now in the persistent compilation cache
  # FLOPs: dense from XLA directly; routed = dense + per-block differences at the snapped bins.
  dense_flops = runs["dense"]["gen_flops_xla"]
  for name, r in runs.items():
    if name == "dense":
      r["flops"] = dense_flops * args.steps
    else:
      r["flops"] = sampler_flops(r["tr"], r["params"], r["snapped"], args, dense_flops, None)

  # 3. interleaved timing of sampling.
  times = {n: [] for n in runs}
  for name, r in runs.items():
    jax.block_until_ready(r["gen"](r["params"], rng, labels))      # warm-up
  for _ in range(args.reps):
    for name, r in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(r["gen"](r["params"], rng, labels))
      times[name].append(time.perf_counter() - t0)
  for name in runs:
    runs[name]["sample_s"] = float(np.median(times[name]))

  # 3b. where the time goes: one block at batch 2*sample_batch (CFG), plain on k tokens vs routed
  # (router + top-k + gather + block + scatter), interleaved.
  model = runs["dense"]["tr"].objective.model
  bsz = 2 * args.sample_batch
  n = (runs["dense"]["tr"].info.image_shape[0] // model.patch_size) ** 2
  blk = DiTBlock(model.hidden_size, model.num_heads, model.head_dim, int(model.hidden_size * model.mlp_ratio),
                 model.dtype)
  bp = {"params": runs["dense"]["params"]["params"]["block_0"]}
  xb = jax.random.normal(jax.random.PRNGKey(0), (bsz, n, model.hidden_size))
  cb = jax.random.normal(jax.random.PRNGKey(1), (bsz, model.hidden_size))
  wk = jax.random.normal(jax.random.PRNGKey(2), (model.hidden_size, 1)) * 0.02
  prof_fns = {}
  for k in sorted({n, num_kept(0.75, n), num_kept(0.5, n)}, reverse=True):
    prof_fns[f"plain block, {k} tokens"] = jax.jit(lambda p, x, c, k=k: blk.apply(p, x[:, :k], c))
    prof_fns[f"routed block, k={k}"] = jax.jit(lambda p, x, c, k=k: blk.apply(
        p, x, c, method=lambda m, x, c: routed_block(m, x, c, jax.nn.sigmoid((x @ wk)[..., 0]), k, "ste")))
  prof_t = {name: [] for name in prof_fns}
  for f in prof_fns.values():
    jax.block_until_ready(f(bp, xb, cb))
  for _ in range(5):
    for name, f in prof_fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(bp, xb, cb))
      prof_t[name].append(time.perf_counter() - t0)
  prof_rows = ["| program (one block, batch %d, N=%d) | ms (median of 5) |" % (bsz, n), "|---|---|"]
  for name in prof_fns:
    prof_rows.append(f"| {name} | {1e3 * float(np.median(prof_t[name])):.2f} |")
  profile_table = "\n".join(prof_rows)

  # 4. quality.
  classifier = get_classifier(base.data, os.path.join(args.workdir, ".cache"), log=quiet)
  eval_labels = balanced_labels(args.num_eval, 10)
  for name, r in runs.items():
    tr, s = r["tr"], r["cfg"].sample
    imgs = generate_images(tr.generator(), r["params"], tr.mesh, jax.random.PRNGKey(1234), eval_labels,
                           steps=s.steps, method=s.method, cfg_scale=s.cfg_scale, batch_size=args.sample_batch)
    r.update(evaluate_samples(classifier, imgs, eval_labels))

  # 5. report.
  d = runs["dense"]
  rows = ["| variant | mean kept ratio (snapped) | sampling s / batch | speed-up | FLOPs (G) | FLOPs ratio | "
          "speed-up / FLOPs-ratio | train temp MiB | FD | class acc |", "|" + "---|" * 10]
  for name, r in runs.items():
    mean = 1.0 if name == "dense" else float(np.mean(r["snapped"]))
    speed = d["sample_s"] / r["sample_s"]
    fr = d["flops"] / r["flops"]
    rows.append(f"| {name} | {mean:.3f} | {r['sample_s']:.3f} | {speed:.2f}x | {r['flops'] / 1e9:.1f} | {fr:.2f}x | "
                f"{speed / fr:.0%} | {r['train_temp_bytes'] / 2**20:.1f} | {r['fd']:.3f} | {r['class_acc']:.3f} |")
  table = "\n".join(rows)
  tables = []
  for name in ("learned-0.75", "learned-0.5"):
    r = runs[name]
    spec = r["tr"].objective.spec.routing
    hdr = "| layer | " + " | ".join(f"t in ({spec.boundaries[i]:.2f}, {spec.boundaries[i + 1]:.2f}]"
                                      for i in range(spec.num_regions)) + " |"
    lines = [f"**{name}** (learned rho; snapped bin in brackets; mean rho {float(np.mean(r['table'])):.3f})", "",
             hdr, "|" + "---|" * (spec.num_regions + 1)]
    for layer in range(r["table"].shape[0]):
      lines.append(f"| {layer} | " + " | ".join(f"{r['table'][layer, i]:.3f} [{r['snapped'][layer, i]:.1f}]"
                                                for i in range(spec.num_regions)) + " |")
    tables.append("\n".join(lines))
  check = ""
  for name in ("uniform-0.75", "uniform-0.5", "mod-0.75", "mod-0.5"):
    r = runs[name]
    check += (f"- {name}: FLOPs by per-block accounting {r['flops'] / 1e9:.2f} G vs XLA on the whole sampler "
              f"{r['gen_flops_xla'] * args.steps / 1e9:.2f} G (scan body x {args.steps} steps)\n")
  cmd = "python -m experiments.bench_routing " + " ".join(sys.argv[1:])
  if args.reuse:
    cmd = (f"python -m experiments.bench_routing {' '.join(a for a in sys.argv[1:] if a != '--reuse')} --train-only` "
           f"(training, untimed), then `{cmd}")
  locked = "held" if os.environ.get("ADAFLOW_BENCH_LOCKED") else "NOT held (set ADAFLOW_BENCH_LOCKED=1 when run under flock)"
  date = utc_now()
  md = f"""# DiffCR token routing vs dense DiT (digits 16x16, patch 2 = 64 tokens)

Machine: {machine}. Date: {date}.
Command: `{cmd}` (total {time.time() - t_start:.0f} s). Benchmark lock /tmp/adaflow-bench.lock: {locked}.
JAX {jax.__version__}, backend {jax.default_backend()}.

Budget: dense pre-training {args.pre} steps x batch {args.batch}, then {args.ft} fine-tuning steps per
variant from that checkpoint (lr {args.ft_lr}, ratio_lr_scale {args.ratio_lr_scale}); sampling Heun {args.steps}
steps, CFG {base.sample.cfg_scale}, batch {args.sample_batch}; FD / class accuracy on {args.num_eval} samples
(classifier-feature FD, not Inception FID). Smallest budgets that fit ~10 minutes: absolute quality
is far from the 2500-step quick start; compare the rows with each other.

{table}

Sampling time: median of {args.reps} interleaved repetitions (all variants timed in turn). FLOPs: per
batch of {args.sample_batch} images (x2 for CFG). Train temp MiB: XLA temporary buffers of the compiled train
step (activation memory); routed training computes two full-width masked blocks per layer (see
adaflow/models/routing/routed_dit.py), so it needs more activation memory than dense training here, unlike the
paper's gathered training.

Where the time goes (one block; "routed" = router + top-k + sort + gather + block + scatter, so
routed k minus plain k is the routing overhead):

{profile_table}

FLOPs cross-check (uniform variants have no lax.switch, so XLA can count the whole sampler):
{check}
## Learned ratio tables

{tables[0]}

{tables[1]}
"""
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  main()
