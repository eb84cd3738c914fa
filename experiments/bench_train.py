"""Training and sampling throughput of a DiT on this machine, with XLA FLOPs and MFU.

    python -m experiments.bench_train [--size S/2] [--batch 32] [--image 32]
    python -m experiments.bench_train --model dq_transformer [--batch 64]

MFU is measured against this machine's own matmul peak, measured in the same run (a large
bf16 x bf16 -> f32 matmul for bf16 models, f32 for f32 models). Writes experiments/results/train.md.
`--model dq_transformer`: configs/quickstart_dqtransformer.py's train step and sampler in bf16 and
float32 over a DQ-VAE tokenizer trained 20 steps here (configs/quickstart_dqvae.py; its codes only
set the sequence lengths), with the dtype "auto" picks on this machine; writes
experiments/results/train_dq_transformer.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp

from adaflow.config_defaults import base_config
from adaflow.data import make_train_batches
from adaflow.flow.driver import make_generate_fn
from adaflow.parallel.precision import apply_xla_cpu_defaults
from adaflow.train.loop import Trainer
from adaflow.train.sharded_state import init_state
from adaflow.flow.driver import generate_images
from adaflow.parallel.precision import resolve_compute_dtype
from adaflow.train.loop import train
from experiments.common import RESULTS, load_config, machine_line, time_calls, utc_now


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))



def matmul_peak(dtype, n: int = 2048, reps: int = 10) -> float:
  a = jnp.ones((n, n), jnp.float32)
  if dtype == "bfloat16":
    f = jax.jit(lambda x: jnp.einsum("ij,jk->ik", x.astype(jnp.bfloat16), x.astype(jnp.bfloat16),
                                     preferred_element_type=jnp.float32))
  else:
    f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  s = time_calls(lambda: f(a).block_until_ready(), reps)
  return 2 * n**3 / s


def config_for(size_patch: str, image: int, batch: int, dtype: str):
  size, patch = size_patch.split("/")
  c = base_config()
  c.data.name, c.data.image_size, c.data.channels = "crops", image, 3
  c.model.size, c.model.patch_size, c.model.dtype = size, int(patch), dtype
  c.train.batch_size, c.train.warmup_steps = batch, 0
  return c


def train_setup(c, workdir: str, batch: int):
  """(Trainer, initial state, host batch, global batch, jitted train step) of config `c`."""
  tr = Trainer(c, workdir, log=lambda m: None)
  state = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings)
  batch_np = make_train_batches(c.data, global_batch_size=batch, seed=0)[0]
  return tr, state, batch_np, tr.global_batch(batch_np), tr.jitted_step()


def time_train_steps(step, state, gbatch, reps: int):
  """(median seconds per step over `reps` after one warm-up step, the state after them)."""
  holder = {"s": state}

  def run_step():
    holder["s"], m = step(holder["s"], gbatch)
    jax.block_until_ready(m)

  run_step()
  return time_calls(run_step, reps), holder["s"]


def bench(size_patch: str, image: int, batch: int, dtype: str, reps: int, sample_steps: int) -> dict:
  c = config_for(size_patch, image, batch, dtype)
  tr, state, batch_np, gbatch, step = train_setup(c, "/tmp/adaflow_bench_train", batch)
  compiled_step = step.lower(state, gbatch).compile()
  step_flops = flops_of(compiled_step)
  mem = compiled_step.memory_analysis()
  train_s, state = time_train_steps(step, state, gbatch, reps)

  params = state.ema_params
  fwd = jax.jit(lambda p, x, t, y: tr.objective.apply(p, x, t, y))
  x = jnp.asarray(batch_np["image"]); t = jnp.full((batch,), 0.5); y = jnp.asarray(batch_np["label"])
  fwd_flops = flops_of(fwd.lower(params, x, t, y).compile())
  fwd(params, x, t, y).block_until_ready()
  fwd_s = time_calls(lambda: fwd(params, x, t, y).block_until_ready(), reps)

  gen = make_generate_fn(tr.generator(), tr.mesh, steps=sample_steps, method="euler", cfg_scale=1.0)
  labels = jnp.asarray(batch_np["label"])
  gen(params, jax.random.PRNGKey(0), labels).block_until_ready()
  gen_s = time_calls(lambda: gen(params, jax.random.PRNGKey(0), labels).block_until_ready(), max(2, reps // 3))
  return dict(train_ips=batch / train_s, fwd_ips=batch / fwd_s, sample_ips=batch / gen_s,
              step_flops=step_flops, fwd_flops=fwd_flops, train_s=train_s, fwd_s=fwd_s,
              temp_bytes=getattr(mem, "temp_size_in_bytes", 0))


def bench_dq_transformer(workdir: str, dtype: str, batch: int, reps: int, width: int = 0) -> dict:
  """The quick-start DQ-Transformer at `dtype` over the tokenizer in `workdir`/dqvae: train img/s
  (median step of `reps`) and sampling img/s (KV-cached sampler + decoding, one batch)."""
  c = load_config("quickstart_dqtransformer")
  c.tokenizer_workdir, c.dq_transformer.dtype = os.path.join(workdir, "dqvae"), dtype
  c.train.batch_size, c.train.warmup_steps = batch, 0
  if width:
    c.dq_transformer.width = width
  tr, state, batch_np, gbatch, step = train_setup(c, os.path.join(workdir, f"dqt_{dtype}"), batch)
  train_s, state = time_train_steps(step, state, gbatch, reps)
  params, labels = state.params, batch_np["label"]
  gen = lambda: generate_images(tr.generator(), params, tr.mesh, jax.random.PRNGKey(0), labels, steps=1,
                                method="euler", cfg_scale=1.0, batch_size=batch)
  gen()
  gen_s = time_calls(gen, max(2, reps // 3))
  return dict(dtype=dtype, train_ips=batch / train_s, sample_ips=batch / gen_s,
              codes=float(jax.device_get(step(state, gbatch)[1]["codes_per_image"])))


def main_dq_transformer(args) -> None:
  machine, start = machine_line(), utc_now()     # the load average before the work
  workdir = "/tmp/adaflow_bench_train_dq"
  v = load_config("quickstart_dqvae")
  v.train.steps, v.train.ckpt_every, v.train.final_samples, v.train.writers = 20, 20, False, ""
  train(v, os.path.join(workdir, "dqvae"), log=lambda m: None)       # resumes: trained once
  auto = resolve_compute_dtype("auto")
  rows = [bench_dq_transformer(workdir, dtype, args.batch, args.reps, args.dq_width) for dtype in ("bfloat16", "float32")]
  for r in rows:
    print(r, flush=True)
  cmd = "python -m experiments.bench_train " + " ".join(sys.argv[1:])
  width = args.dq_width or load_config("quickstart_dqtransformer").dq_transformer.width
  lines = [f"# DQ-Transformer (configs/quickstart_dqtransformer.py, width {width}, crops 32x32) in bf16 and "
           f"float32, batch {args.batch}", "", f"- Machine: {machine}. Date: {start}.", f"- Command: `{cmd}`",
           f"- `dq_transformer.dtype=\"auto\"` (the default) picks {auto[0]} here ({auto[1]}).",
           f"- Tokenizer: configs/quickstart_dqvae.py trained 20 steps ({rows[0]['codes']:.1f} codes per image "
           "in the timed batch); train img/s is the median of the timed steps, sampling one batch of the "
           "KV-cached sampler plus decoding.", "",
           "| compute dtype | train img/s | sampling img/s |", "|---|---:|---:|"]
  lines += [f"| {r['dtype']} | {r['train_ips']:.1f} | {r['sample_ips']:.1f} |" for r in rows]
  lines += ["", f"bf16 / float32 in this run: train {rows[0]['train_ips'] / rows[1]['train_ips']:.2f}x, "
            f"sampling {rows[0]['sample_ips'] / rows[1]['sample_ips']:.2f}x."]
  out = args.out or os.path.join(RESULTS, "train_dq_transformer.md")
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_train", description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", choices=("dit", "dq_transformer"), default="dit")
  ap.add_argument("--size", default="S/2")
  ap.add_argument("--image", type=int, default=32)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--sample-steps", type=int, default=16)
  ap.add_argument("--dq_width", type=int, default=0, help="dq_transformer: width (0: the config's 128)")
  ap.add_argument("--out", default=None, help="default: results/train.md (dit), train_dq_transformer.md")
  args = ap.parse_args()
  apply_xla_cpu_defaults()        # as the CLI starts, before the backend does
  if args.model == "dq_transformer":
    return main_dq_transformer(args)
  args.out = args.out or os.path.join(RESULTS, "train.md")
  rows = []
  for dtype in ("bfloat16", "float32"):
    peak = matmul_peak(dtype)
    r = bench(args.size, args.image, args.batch, dtype, args.reps, args.sample_steps)
    r.update(dtype=dtype, peak=peak, mfu=r["step_flops"] / r["train_s"] / peak,
             fwd_mfu=r["fwd_flops"] / r["fwd_s"] / peak)
    rows.append(r)
    print(r, flush=True)
  now = utc_now()
  lines = [
      f"# Training and sampling throughput: DiT-{args.size} at {args.image}x{args.image}x3, batch {args.batch}",
      "",
      f"Measured {now} on this project's machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
      f"no GPU, jax {jax.__version__}. Command: `python -m experiments.bench_train {' '.join(sys.argv[1:])}`. "
      f"Other jobs may have shared the CPU.",
      "",
      "| compute dtype | train img/s | forward img/s | sampling img/s (Euler, "
      f"{args.sample_steps} steps) | train-step GFLOP (XLA) | matmul peak GFLOP/s (measured) | train MFU | forward MFU | XLA temp MiB |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(f"| {r['dtype']} | {r['train_ips']:.1f} | {r['fwd_ips']:.1f} | {r['sample_ips']:.2f} | "
                 f"{r['step_flops'] / 1e9:.1f} | {r['peak'] / 1e9:.0f} | {100 * r['mfu']:.0f}% | "
                 f"{100 * r['fwd_mfu']:.0f}% | {r['temp_bytes'] / 2**20:.0f} |")
  speed = rows[0]["train_ips"] / rows[1]["train_ips"]
  lines += ["", f"bf16 / fp32 training speed ratio (same run): {speed:.2f}x.", "",
            "MFU = XLA cost-analysis FLOPs of the compiled step / step time / the matmul peak of the same "
            "dtype measured in this run (2048^3 matmul). Parameters and optimizer state are float32 in both "
            "rows; `bfloat16` casts matmul inputs to bf16 and accumulates in float32."]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
