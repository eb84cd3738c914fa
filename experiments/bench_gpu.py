"""DiT-B/2 and DiT-XL/2 train throughput on one GPU: adaflow (jit, bf16 compute) vs diffusers'
DiTTransformer2DModel in bf16 (eager autocast and torch.compile). Run by experiments/bench_gpu.sh.

    python -m experiments.bench_gpu [--sizes B,XL] [--batch 64] [--steps 10] [--out experiments/results/gpu.md]
    python -m experiments.bench_gpu --smoke        # CPU, tiny DiT, seconds: checks the script end to end

Same network on both sides: 32x32x4 latents, patch 2 (256 tokens, the ImageNet-256 latent shape),
1000 classes, no learned sigma, LayerNorm eps 1e-6; MSE on a fixed random target, AdamW, one fixed
batch (no data loading). adaflow: float32 params, bf16 matmul inputs, float32 accumulation,
`scan_blocks`, params and optimizer state donated. torch: float32 master weights under
`torch.autocast(bfloat16)`, the usual mixed-precision recipe, eager and `torch.compile`.

Each contender runs in its own subprocess (JAX and torch do not share one GPU allocator; peak
memory is per process): adaflow peak = `device.memory_stats()["peak_bytes_in_use"]` (JAX started
with XLA_PYTHON_CLIENT_PREALLOCATE=false), torch peak = `torch.cuda.max_memory_allocated()`. Train
images/s is the median over `--steps` timed steps after 3 warm-up steps (compilation excluded and
reported apart). MFU = model FLOPs per second / the GPU's dense bf16 peak (adaflow's table in
adaflow/train/diagnostics.py, or --peak-tflops); model FLOPs per train step = 3 x forward matmul
FLOPs (2 per multiply-add: 24 N D^2 + 4 N^2 D per block and image, plus embed/adaLN/head), the
same count for every contender. Writes a markdown table to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# Not experiments.common.ROOT: that module imports jax, and the torch contenders' processes stay without it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"T": (2, 64, 2), "B": (12, 768, 12), "XL": (28, 1152, 16)}   # T: tiny, --smoke only
CONTENDERS = ("adaflow", "torch-bf16", "torch-compile-bf16")


def model_flops_per_image(size: str, image: int, channels: int, patch: int = 2) -> float:
  """Forward matmul FLOPs of one image (2 per multiply-add)."""
  depth, d, _ = SIZES[size]
  n = (image // patch) ** 2
  per_block = 24 * n * d * d + 4 * n * n * d + 2 * d * 6 * d
  embed = 2 * n * (patch * patch * channels) * d + 2 * 256 * d + 2 * d * d
  head = 2 * n * d * patch * patch * channels + 2 * d * 2 * d
  return float(depth * per_block + embed + head)


def make_inputs(batch: int, image: int, channels: int, classes: int):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, image, image, channels)).astype(np.float32)
  target = rng.standard_normal((batch, image, image, channels)).astype(np.float32)
  t = rng.uniform(0, 1, size=batch).astype(np.float32)
  y = rng.integers(0, classes, size=batch).astype(np.int32)
  return x, t, y, target


def timed(step, n_warm: int, n: int, sync) -> tuple[float, float]:
  """(first call seconds, median seconds per step over n steps after n_warm warm-up steps)."""
  t0 = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - t0
  for _ in range(n_warm - 1):
    step()
  sync()
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def run_adaflow(size: str, batch: int, image: int, channels: int, classes: int, steps: int) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from adaflow.models.dit import DiT
  depth, d, h = SIZES[size]
  model = DiT(image_size=(image, image), in_channels=channels, patch_size=2, hidden_size=d, depth=depth,
              num_heads=h, num_classes=classes, dtype=jnp.bfloat16, scan_blocks=True)
  x, t, y, target = (jnp.asarray(a) for a in make_inputs(batch, image, channels, classes))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, t, y))
  tx = optax.adamw(1e-4)
  opt = tx.init(params)

  def train_step(p, o):
    loss, g = jax.value_and_grad(lambda q: jnp.mean(jnp.square(model.apply(q, x, t, y) - target)))(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  t0 = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt).compile()
  compile_s = time.perf_counter() - t0
  state = {"p": params, "o": opt, "loss": None}

  def step():
    state["p"], state["o"], state["loss"] = compiled(state["p"], state["o"])

  _, sec = timed(step, 3, steps, lambda: state["loss"].block_until_ready())
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  peak = stats.get("peak_bytes_in_use") if stats else None
  if peak is None:
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  return {"compile_s": compile_s, "step_s": sec, "peak_bytes": int(peak), "device": dev.device_kind,
          "platform": dev.platform, "loss": float(state["loss"]),
          "peak_method": "memory_stats" if stats else "XLA memory_analysis plan"}


def run_torch(size: str, batch: int, image: int, channels: int, classes: int, steps: int, compile_: bool) -> dict:
  import torch
  from diffusers import DiTTransformer2DModel
  depth, d, h = SIZES[size]
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  m = DiTTransformer2DModel(num_attention_heads=h, attention_head_dim=d // h, in_channels=channels,
                            out_channels=channels, num_layers=depth, sample_size=image, patch_size=2,
                            num_embeds_ada_norm=classes, norm_eps=1e-6).to(dev).train()
  x, t, y, target = make_inputs(batch, image, channels, classes)
  x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)
  t = torch.from_numpy(t * 1000.0).to(dev)
  y = torch.from_numpy(y).long().to(dev)
  target = torch.from_numpy(target).permute(0, 3, 1, 2).contiguous().to(dev)
  opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
  fn = torch.compile(m) if compile_ else m
  state = {"loss": None}

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev, dtype=torch.bfloat16):
      out = fn(x, timestep=t, class_labels=y).sample
    loss = torch.nn.functional.mse_loss(out.float(), target)
    loss.backward()
    opt.step()
    state["loss"] = loss

  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: state["loss"].item())
  if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
  first, sec = timed(step, 3, steps, sync)
  peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
  name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
  return {"compile_s": first, "step_s": sec, "peak_bytes": peak, "device": name, "platform": dev,
          "loss": float(state["loss"]), "peak_method": "torch.cuda.max_memory_allocated" if peak else "n/a"}


def child(a) -> None:
  if a._child == "adaflow":
    r = run_adaflow(a.size, a.batch, a.image, a.channels, a.classes, a.steps)
  else:
    r = run_torch(a.size, a.batch, a.image, a.channels, a.classes, a.steps, compile_=a._child == "torch-compile-bf16")
  print("RESULT " + json.dumps(r), flush=True)


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_gpu", description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="B,XL")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--image", type=int, default=32)
  ap.add_argument("--channels", type=int, default=4)
  ap.add_argument("--classes", type=int, default=1000)
  ap.add_argument("--contenders", default=",".join(CONTENDERS))
  ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak of the GPU; 0 = adaflow's table")
  ap.add_argument("--timeout", type=float, default=200.0, help="seconds per contender and size")
  ap.add_argument("--budget", type=float, default=450.0,
                  help="seconds for the whole run: a contender gets at most what is left; the table is always written")
  ap.add_argument("--smoke", action="store_true", help="CPU, tiny DiT (T), batch 4, 8x8 latents, eager torch only")
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "gpu.md"))
  ap.add_argument("--size", help=argparse.SUPPRESS)
  ap.add_argument("--_child", choices=CONTENDERS, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a._child:
    child(a)
    return
  if a.smoke:
    a.sizes, a.batch, a.steps, a.image, a.classes, a.contenders = "T", 4, 2, 8, 10, "adaflow,torch-bf16"
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  if a.smoke:
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  rows, t_start = [], time.time()
  for size in a.sizes.split(","):
    for who in a.contenders.split(","):
      cmd = [sys.executable, "-m", "experiments.bench_gpu", "--_child", who, "--size", size, "--batch", str(a.batch),
             "--steps", str(a.steps), "--image", str(a.image), "--channels", str(a.channels), "--classes", str(a.classes)]
      left = a.budget - (time.time() - t_start)
      if left < 20:
        res = {"error": f"skipped: the {a.budget:.0f} s budget was spent"}
        res.update(size=size, who=who)
        rows.append(res)
        continue
      limit = min(a.timeout, left)
      try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=limit)
        lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        res = json.loads(lines[-1][7:]) if r.returncode == 0 and lines else {"error": r.stderr.strip()[-300:]}
      except subprocess.TimeoutExpired:
        res = {"error": f"timed out after {limit:.0f} s"}
      res.update(size=size, who=who)
      rows.append(res)
      print(json.dumps(res), flush=True)
  write(a, rows, time.time() - t_start)


def write(a, rows, elapsed: float) -> None:
  from adaflow.train.diagnostics import PEAK_BF16_TFLOPS
  device = next((r["device"] for r in rows if "device" in r and r.get("platform") not in ("cpu",)), "cpu")
  peak = a.peak_tflops or next((p for sub, p in PEAK_BF16_TFLOPS["gpu"] if sub in device.lower()), 0.0)
  head = [f"# DiT train throughput on one GPU: adaflow vs diffusers DiT (bf16){' - SMOKE RUN (CPU, tiny)' if a.smoke else ''}",
          "", f"- Device: {device}; bf16 dense peak {peak or 'unknown'} TFLOP/s; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; total {elapsed / 60:.1f} min.",
          f"- Command: `python -m experiments.bench_gpu --sizes {a.sizes} --batch {a.batch} --steps {a.steps}"
          f"{' --smoke' if a.smoke else ''}` ({a.image}x{a.image}x{a.channels} latents, patch 2, "
          f"{(a.image // 2) ** 2} tokens, {a.classes} classes).",
          "- Train img/s: median of the timed steps after 3 warm-ups; first step = compilation (adaflow: XLA "
          "compile; torch.compile: first call) ; MFU = model FLOPs (3 x forward matmuls) / time / peak.", "",
          "| model | contender | train img/s | vs torch bf16 eager | MFU | peak memory (MiB) | compile / first step (s) |",
          "|---|---|---|---|---|---|---|"]
  lines = list(head)
  for size in a.sizes.split(","):
    flops = 3 * model_flops_per_image(size, a.image, a.channels)
    base = next((r for r in rows if r["size"] == size and r["who"] == "torch-bf16" and "step_s" in r), None)
    for r in (r for r in rows if r["size"] == size):
      name = f"DiT-{size}/2"
      if "error" in r:
        lines.append(f"| {name} | {r['who']} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | | |")
        continue
      ips = a.batch / r["step_s"]
      ratio = f"{ips / (a.batch / base['step_s']):.2f}x" if base else "-"
      mfu = f"{100 * ips * flops / (peak * 1e12):.1f}%" if peak else "-"
      mem = f"{r['peak_bytes'] / 2 ** 20:.0f}" if r.get("peak_bytes") else "n/a"
      lines.append(f"| {name} | {r['who']} | {ips:.1f} | {ratio} | {mfu} | {mem} | {r['compile_s']:.1f} |")
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
