"""Host input vs the train step: does `data.prefetch` make input keep up?

    python -m experiments.bench_input [--smoke] [--out experiments/results/input.md]

1. Writes a real TFDS dataset in ArrayRecord format to a temp dir, offline (a tfds builder whose
   examples are JPEG-encoded photo crops from the embedded `crops` source; no TensorFlow needed),
   stored at 32 px (like imagenet_resized/32x32) and at 128 px (upscaled crops) read with
   data.resize=True, which pays a 16x larger JPEG decode plus a PIL resize per image.
2. Input images/s of `make_train_batches(...)[step]` (random ArrayRecord read + PIL decode + flip
   + scaling, per image): synchronous, and through `adaflow.data.prefetch.Prefetcher` with depth
   1, 2, 4 (depth worker threads, nothing else running), interleaved and repeated.
3. Train-step images/s of small DiTs on 32x32x3 (`Trainer.jitted_step`, medians of blocked calls).
4. End-to-end: the real `adaflow.train.loop.train` with data.prefetch = 0 (synchronous) and 2,
   steady-state steps/s from metrics.jsonl (the first log interval, which holds the compile,
   is dropped).
Writes experiments/results/input.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from adaflow import data as data_lib
from adaflow.config_defaults import base_config
from adaflow.data import embedded
from adaflow.data.prefetch import Prefetcher
from adaflow.train.loop import Trainer, train
from adaflow.train.metrics_log import read_metrics
from adaflow.train.sharded_state import init_state
from experiments.common import RESULTS, machine_line, matmul_flags, time_calls, utc_now, write_report

DATASET = "bench_input_images"
# name: (hidden, depth, heads, patch); all on 32x32x3 data, bf16 matmuls as in the defaults.
MODELS = {"tiny": (64, 2, 2, 4), "quickstart": (128, 4, 4, 4)}


def write_dataset(data_dir: str, num: int, stored: int) -> None:
  """`num` examples {'image': JPEG [stored, stored, 3], 'label': which photo} as ArrayRecord."""
  import tensorflow_datasets as tfds
  from PIL import Image
  # crops come at 32 or 64 px; larger stored sizes are bicubic upscales of the 64 px crops.
  crops = data_lib.make_source(dict(name="crops", image_size=min(stored, 64), channels=3, num_crops=num))

  class BenchInputImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(stored, stored, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=len(embedded.CROP_PHOTOS))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(num):     # PIL images: tfds encodes numpy arrays with TensorFlow, PIL ones without
        ex = crops[i]
        image = Image.fromarray(ex["image"]).resize((stored, stored), Image.BICUBIC)
        yield i, {"image": image, "label": int(ex["label"])}

  BenchInputImages(data_dir=data_dir, file_format="array_record").download_and_prepare(
      file_format="array_record")


def config_for(data_dir: str, stored: int, model: str, batch: int):
  hidden, depth, heads, patch = MODELS[model]
  c = base_config()
  c.name = f"bench_input_{model}"
  c.data.name, c.data.data_dir, c.data.image_size = f"tfds:{DATASET}", data_dir, 32
  c.data.resize, c.data.random_flip = stored != 32, True
  c.model.hidden_size, c.model.depth, c.model.num_heads, c.model.patch_size = hidden, depth, heads, patch
  c.train.batch_size, c.train.warmup_steps = batch, 10
  c.train.ckpt_every, c.train.final_samples = 10**6, False
  return c


def input_rate(c, steps: int, depth, start: int) -> float:
  """Images/s of batches[step] for steps [start, start + steps) (depth None: no Prefetcher)."""
  b = data_lib.make_train_batches(c.data, global_batch_size=c.train.batch_size, seed=0)
  b[10**6]                                         # open files, warm caches outside the timing
  if depth is None:
    t0 = time.perf_counter()
    for s in range(start, start + steps):
      b[s]
    return steps * c.train.batch_size / (time.perf_counter() - t0)
  with Prefetcher(b, start=start, stop=start + steps, depth=depth) as p:
    t0 = time.perf_counter()
    for s in range(start, start + steps):
      p[s]
    return steps * c.train.batch_size / (time.perf_counter() - t0)


def step_rate(c, reps: int) -> float:
  """Images/s of the jitted train step on one fixed batch (blocked, median of `reps`)."""
  tr = Trainer(c, tempfile.mkdtemp(prefix="step_", dir=os.path.dirname(c.data.data_dir)), log=lambda m: None)
  holder = {"s": init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings)}
  batch = tr.global_batch(data_lib.make_train_batches(c.data, global_batch_size=c.train.batch_size, seed=0)[0])
  step = tr.jitted_step()

  def run():
    holder["s"], m = step(holder["s"], batch)
    jax.block_until_ready(m)

  run()
  return c.train.batch_size / time_calls(run, reps)


def loop_rates(c, steps: int, intervals: int, prefetch: int) -> list:
  """Steps/s of the real training loop over `intervals` log intervals of `steps` steps each, after a
  first interval that holds the compile (dropped)."""
  c = c.copy_and_resolve_references()
  c.data.prefetch, c.train.steps, c.train.log_every = prefetch, (intervals + 1) * steps, steps
  w = tempfile.mkdtemp(prefix="loop_", dir=os.path.dirname(c.data.data_dir))
  train(c, w, log=lambda m: None)
  rows = [r for r in read_metrics(w) if "images_per_second" in r]
  return [r["images_per_second"] / c.train.batch_size for r in rows[1:]]


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_input", description=__doc__.split("\n\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny sizes, one model: seconds; writes no file unless --out")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--examples", type=int, default=4096)
  ap.add_argument("--input-steps", type=int, default=10, help="steps per input measurement")
  ap.add_argument("--loop-steps", type=int, default=10, help="steps per loop log interval")
  ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (input) / intervals (loop)")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.smoke:
    args.batch, args.examples, args.input_steps, args.loop_steps, args.repeats = 16, 128, 4, 3, 1
    MODELS.pop("quickstart")
  out = args.out or (None if args.smoke else
                     os.path.join(RESULTS, "input.md"))
  header = (f"Measured {utc_now()}: {machine_line()}; CPU flags: {matmul_flags()}. "
            "Command: `" + " ".join(["python", "-m", "experiments.bench_input", *sys.argv[1:]]) + "`.")
  print(header, flush=True)
  root = tempfile.mkdtemp(prefix="adaflow_bench_input_data_")
  # The step is compiled once per model (step_rate, then two train() runs with the same HLO).
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

  # 1-2. Input alone, for 32 px JPEGs (the training setting) and 128 px JPEGs resized to 32.
  # Modes are interleaved and repeated on fresh step ranges so that load drift hits all alike.
  modes = (None, 1, 2, 4)
  input_rows = []
  for stored in ((32,) if args.smoke else (32, 128)):
    d = os.path.join(root, str(stored))
    write_dataset(d, args.examples, stored)
    c = config_for(d, stored, "tiny", args.batch)
    rates = {m: [] for m in modes}
    for rep in range(args.repeats):
      for k, m in enumerate(modes):
        rates[m].append(input_rate(c, args.input_steps, m, start=1000 * (1 + rep * len(modes) + k)))
    row = {"stored": stored, **{m: float(np.median(v)) for m, v in rates.items()}}
    input_rows.append(row)
    print(row, flush=True)

  # 3-4. Train step alone, then the real loop without and with prefetching (32 px data).
  d32 = os.path.join(root, "32")
  model_rows = []
  for model in MODELS:
    c = config_for(d32, 32, model, args.batch)
    row = {"model": model, "step_ips": step_rate(c, max(args.repeats, 2) * 2)}
    for prefetch in (0, 2):
      rates = loop_rates(c, args.loop_steps, args.repeats, prefetch)
      row[prefetch], row[f"all{prefetch}"] = float(np.median(rates)), rates
    model_rows.append(row)
    print(row, flush=True)

  sync32 = input_rows[0][None]
  lines = [
      f"# Host input vs the train step: `data.prefetch` (32x32x3, batch {args.batch})", "",
      header, "",
      f"Data: a real TFDS dataset in ArrayRecord format written offline to a temp dir by the script "
      f"({args.examples} JPEG photo crops from the embedded `crops` source; the files sit in the page "
      "cache, so reads are memory-speed; on a network file system reads are slower and overlap matters "
      "more). Input = `make_train_batches(...)[step]`: per image a random record read, PIL JPEG "
      "decode, random flip; then batching and scaling to [-1, 1]. `Prefetcher` depth d = d worker "
      "threads building the next d batches.", "",
      f"## Input alone (images/s; median of {args.repeats} interleaved runs of {args.input_steps} batches)", "",
      "| stored JPEG | synchronous | prefetch depth 1 | depth 2 | depth 4 |",
      "|---|---|---|---|---|",
  ]
  for r in input_rows:
    what = "32x32" if r["stored"] == 32 else f"{r['stored']}x{r['stored']} (upscaled 64 px crops), resized to 32 (data.resize)"
    lines.append(f"| {what} | {r[None]:.0f} | {r[1]:.0f} | {r[2]:.0f} | {r[4]:.0f} |")
  lines += [
      "", "## Train step vs input, and the training loop end to end (32x32 JPEG data)", "",
      "Train step: `Trainer.jitted_step` on a fixed batch, blocked, median of "
      f"{max(args.repeats, 2) * 2} calls. Loop: `adaflow.train.loop.train`, median steps/s over "
      f"{args.repeats} log intervals of {args.loop_steps} steps after a first interval that holds the "
      "compile; `data.prefetch` 0 = synchronous, 2 = the default. 'Serial bound' = what a loop that "
      "builds each batch and then steps can reach: 1 / (B / input + B / step) steps/s.", "",
      "| model (hidden, depth, heads, patch) | train step img/s | input img/s (sync) | serial bound, "
      "steps/s | loop steps/s, prefetch 0 | loop steps/s, prefetch 2 | prefetch 2 / 0 |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in model_rows:
    serial = 1.0 / (args.batch / sync32 + args.batch / r["step_ips"])
    lines.append(f"| {r['model']} {MODELS[r['model']]} | {r['step_ips']:.0f} | {sync32:.0f} | {serial:.2f} | "
                 f"{r[0]:.2f} | {r[2]:.2f} | {r[2] / r[0]:.2f}x |")
  lines += ["", "Loop steps/s per interval: " + "; ".join(
      f"{r['model']}: prefetch 0 {', '.join(f'{x:.2f}' for x in r['all0'])}, prefetch 2 "
      f"{', '.join(f'{x:.2f}' for x in r['all2'])}" for r in model_rows) + "."]
  text = "\n".join(lines) + "\n"
  shutil.rmtree(root, ignore_errors=True)   # datasets, workdirs, compilation cache
  write_report(text, out)


if __name__ == "__main__":
  main()
