"""FLOPs per image of the ImageNet64 recipes (XLA cost_analysis on CPU) and the TPU-hours they imply.

  python -m experiments.imagenet64.flops [--batch 8] [--peak 275e12] [--mfu 0.4]

Measured (compiled on this machine's CPU backend, batch `--batch`, divided per image):
* the dense DiT-B/4 64x64 train step (forward + backward + optimizer + EMA), from
  `experiments/imagenet64/config.py:dense` with 1000 classes (TFDS mock metadata; no data read);
* one network evaluation (sampling NFE), and the FID Inception forward at 299x299.
Then: training chip-hours = steps * global batch * train FLOPs/image / (peak * MFU), sampling
50k images (Heun, 2 * sample.steps - 1 NFE) and Inception features likewise. Peak and MFU are
ASSUMPTIONS (defaults: TPU v4 bf16 peak 275 TFLOP/s per chip (tpu/env.sh default accelerator), 40% MFU); XLA counts a multiply-add
as 2 FLOPs and does not count elementwise work separately from its fusion estimates.
Writes experiments/results/imagenet64_flops.md.
"""
from __future__ import annotations

import argparse
import os

from experiments.common import RESULTS, utc_now
from experiments.imagenet64 import config as recipes


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def measure(batch: int) -> dict:
  import jax
  import jax.numpy as jnp
  import tensorflow_datasets as tfds
  from adaflow.eval import inception as inc
  from adaflow.train.loop import Trainer

  c = recipes.get_config("dense")
  recipe = recipes.get_config("dense")   # the real global batch / steps (c is resized to `batch`)
  c.train.batch_size = batch
  with tfds.testing.mock_data(num_examples=batch):
    tr = Trainer(c, "/tmp/adaflow_in64_flops", log=lambda m: None)
  h, w, ch = tr.info.image_shape
  abstract_batch = {"image": jax.ShapeDtypeStruct((batch, h, w, ch), jnp.float32),
                    "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  step = tr.jitted_step()
  state = tr.abstract_state
  train_flops = _flops(step.lower(state, abstract_batch).compile())
  params = state.ema_params
  fwd = jax.jit(lambda p, x, t, y: tr.objective.apply(p, x, t, y))
  fwd_flops = _flops(fwd.lower(params, abstract_batch["image"], jax.ShapeDtypeStruct((batch,), jnp.float32),
                               abstract_batch["label"]).compile())
  iparams = inc.param_shapes()
  feat = jax.jit(lambda p, x: inc.FIDInceptionV3().apply({"params": p}, inc.preprocess(x, "tf")))
  inc_flops = _flops(feat.lower(iparams, jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8)).compile())
  nparams = sum(int(x.size) for x in jax.tree.leaves(params))
  return dict(train=train_flops / batch, fwd=fwd_flops / batch, inception=inc_flops / batch,
              params=nparams, config=recipe, classes=tr.info.num_classes)


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.imagenet64.flops", description=__doc__.split("\n\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--peak", type=float, default=275e12, help="assumed bf16 peak FLOP/s per chip (v4: 275e12, v5p: 459e12)")
  ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
  ap.add_argument("--out", default=os.path.join(RESULTS, "imagenet64_flops.md"))
  args = ap.parse_args()
  m = measure(args.batch)
  c = m["config"]
  images = c.train.steps * c.train.batch_size
  nfe = 2 * c.sample.steps - 1 if c.sample.method == "heun" else c.sample.steps
  cfg_mult = 1 if float(c.sample.cfg_scale) == 1.0 else 2   # CFG: conditional + unconditional pass
  rate = args.peak * args.mfu
  train_h = images * m["train"] / rate / 3600
  sample_h = 50_000 * nfe * cfg_mult * m["fwd"] / rate / 3600
  fid_h = 50_000 * m["inception"] / rate / 3600
  now = utc_now()
  lines = [
      "# ImageNet 64x64 dense DiT-B/4: measured FLOPs per image and implied TPU time",
      "",
      f"Measured {now} with XLA cost_analysis on this project's machine (2-core CPU, no GPU; other "
      f"jobs may have shared the CPU, which does not affect FLOP counts). Command: "
      f"`python -m experiments.imagenet64.flops --batch {args.batch} --peak {args.peak:g} --mfu {args.mfu}`.",
      "",
      f"Model: DiT-B/4, 64x64x3, 256 tokens, {m['classes']} classes, {m['params'] / 1e6:.1f}M parameters.",
      "",
      "| quantity | GFLOP per image (measured) |",
      "|---|---|",
      f"| train step (fwd + bwd + Adam + EMA) | {m['train'] / 1e9:.2f} |",
      f"| one network evaluation (sampling NFE) | {m['fwd'] / 1e9:.2f} |",
      f"| FID Inception forward (64 -> 299 resize + pool3) | {m['inception'] / 1e9:.2f} |",
      "",
      f"Implied chip-hours at an ASSUMED {args.peak / 1e12:.0f} TFLOP/s bf16 peak per chip and "
      f"{100 * args.mfu:.0f}% MFU (not measured on a TPU):",
      "",
      "| job | work | chip-hours |",
      "|---|---|---|",
      f"| dense training | {c.train.steps} steps x {c.train.batch_size} = {images / 1e6:.1f}M images | {train_h:.3g} |",
      f"| FID-50K sampling | 50k images x {nfe} NFE ({c.sample.method}, {c.sample.steps} steps)"
      f" x {cfg_mult} (CFG scale {c.sample.cfg_scale}) | {sample_h:.3g} |",
      f"| FID-50K Inception features | 50k images | {fid_h:.3g} |",
      "",
      "Divide by the number of chips for wall-clock hours (v4-N and v5p-N slices have N/2 chips, v5litepod-N has N). Method runs "
      "scale the training row by their training-FLOPs ratio (see README.md).",
  ]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
