"""DQ-VAE vs fixed-grid VQ (reconstruction), then DQ-Transformer vs raster transformer (generation).

    flock /tmp/adaflow-bench.lock python -m experiments.bench_dq --phase recon [--steps 600]
    flock /tmp/adaflow-bench.lock python -m experiments.bench_dq --phase gen   [--gen_steps 800]

Data: the embedded `crops` photos, 32x32 RGB. Coarse regions 8x8 px (16 per image), fine cells
4x4 px (64 per image). Every tokenizer has the same encoder/decoder/codebook; only the router
differs:
  * fixed r=0 / r=1        uniform grids: 16 / 64 codes per image (every region one granularity)
  * fixed r=0.25/0.5/0.75  a fixed (content-independent) map with the same number of codes for
                           every image as DQ's average at that r: 28 / 40 / 52 codes
  * gumbel r=...           the learned Gumbel gate with the budget loss (variable length), the
                           paper's straight-through estimator (selected map x gate max)
  * gumbelboth r=0.5       the same gate trained with the 'both' estimator (dqvae.gate_gradient)
  * entropy r=0.5          the entropy router
Runs are named `<router>_<r>` (`--runs` picks a subset); rows of earlier invocations with the same
workdir are kept, so the table can be built up run by run; each row says its training steps.
Reconstruction metrics on 512 crops not used for the threshold (seed 999): MSE, PSNR (images in
[-1, 1], peak-to-peak 2) and FD of reconstructions (adaflow.eval classifier features, not
Inception FID). Writes experiments/results/dq.md (recon and gen sections) and PNG maps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adaflow import data as data_lib
from adaflow.eval import evaluate_samples, get_classifier, real_vs_real_fd
from adaflow.models import dqvae as dq
from adaflow.train.images import save_grid
from adaflow.train.loop import train
from adaflow.train.loop import load_trainer_and_params
from experiments.common import RESULTS, load_config, machine_line, utc_now


RECON_RUNS = ("fixed_0.5", "gumbel_0.5", "gumbelboth_0.5", "entropy_0.5", "fixed_0.0", "fixed_1.0",
              "fixed_0.25", "gumbel_0.25", "fixed_0.75", "gumbel_0.75")
RUN_NAMES = {"gumbel": "DQ-VAE (gate, paper's estimator)", "gumbelboth": "DQ-VAE (gate, 'both' estimator)",
             "entropy": "DQ-VAE (entropy router)",
             "gumbel:argmax": "DQ-VAE (gate, paper's estimator), calibration off: argmax",
             "gumbelboth:argmax": "DQ-VAE (gate, 'both' estimator), calibration off: argmax"}


def parse_run(name: str):
  """'gumbelboth_0.5' -> ('gumbelboth', 0.5)."""
  kind, r = name.rsplit("_", 1)
  if kind not in ("fixed", "gumbel", "gumbelboth", "entropy"):
    raise SystemExit(f"--runs: unknown run {name!r}; names are <fixed|gumbel|gumbelboth|entropy>_<r>")
  return kind, float(r)


def vae_config(kind: str, r: float, steps: int, width: int, batch: int):
  c = load_config("quickstart_dqvae")
  c.name = f"bench_{kind}_{r}"
  router = "gumbel" if kind == "gumbelboth" else kind
  c.dqvae.router = router
  c.dqvae.gate_gradient = "both" if kind == "gumbelboth" else "max"
  c.dqvae.fine_fraction = r
  c.dqvae.width = width
  c.train.steps = steps
  c.train.batch_size = batch
  c.train.warmup_steps = min(100, steps // 10)
  c.train.ckpt_every = steps
  c.train.log_every = max(steps // 4, 1)
  c.train.final_samples = False
  return c


def recon_metrics(tr, params, images, labels, classifier) -> dict:
  fn = jax.jit(tr.objective.tokenizer.reconstruct)
  recs, masks = [], []
  for s in range(0, len(images), 128):
    r, m = fn(params, jnp.asarray(images[s:s + 128]))
    recs.append(np.asarray(r))
    masks.append(np.asarray(m))
  rec, mask = np.concatenate(recs), np.concatenate(masks)
  mse = float(np.mean((np.clip(rec, -1, 1) - images) ** 2))
  q = evaluate_samples(classifier, np.clip(rec, -1, 1), labels)
  frac = float(mask.mean())
  codes = tr.objective.layout.nc * (1 + 3 * mask.mean(1))
  return {"mse": mse, "psnr": 10 * np.log10(4.0 / mse), "fd": q["fd"], "fd_low": q["fd_low"], "fd_high": q["fd_high"],
          "class_acc": q.get("class_acc"),
          "fine_fraction": frac, "codes_mean": float(codes.mean()), "codes_min": int(codes.min()),
          "codes_max": int(codes.max()), "rec": rec, "mask": mask}


def phase_recon(args, cache, on_row=None):
  runs = [parse_run(n) for n in args.runs.split(",")]
  base = vae_config("fixed", 0.0, 1, args.width, args.batch)
  images, labels = data_lib.load_arrays(base.data, args.num_eval, seed=999)
  classifier = get_classifier(base.data, cache)
  floor = real_vs_real_fd(classifier, base.data, args.num_eval)
  for kind, r in runs:
    wd = os.path.join(args.workdir, f"vae_{kind}_{r}")
    c = vae_config(kind, r, args.steps, args.width, args.batch)
    t0 = time.time()
    train(c, wd, log=lambda m: None)
    secs = time.time() - t0
    tr, params, _ = load_trainer_and_params(wd)
    m = recon_metrics(tr, params, images, labels, classifier)
    m.update(router=kind, r=r, train_seconds=secs, steps=args.steps)
    print(f"{kind:10s} r={r:.2f} codes {m['codes_mean']:5.1f} [{m['codes_min']}-{m['codes_max']}] "
          f"mse {m['mse']:.4f} psnr {m['psnr']:.2f} fd {m['fd']:.3f} ({secs:.0f}s)", flush=True)
    if kind in ("gumbel", "gumbelboth", "entropy") and r == 0.5:
      n = 8
      maps = dq.render_granularity(images[:n], m["mask"][:n], tr.objective.layout.coarse_stride)
      grid = np.concatenate([images[:n], np.clip(m["rec"][:n], -1, 1), maps])
      save_grid(grid, os.path.join(RESULTS, f"dq_map_{kind}.png"), rows=3, upscale=4)
    row = {k: v for k, v in m.items() if k not in ("rec", "mask")}
    if on_row is not None:
      on_row(f"{kind}_{r}", row, floor)
    if kind in ("gumbel", "gumbelboth"):
      # The same tokenizer encoded as in the paper: the gate's argmax (threshold 0) instead of the
      # calibrated threshold (dqvae.gate_calibration) it was trained and reported with above.
      argmax_params = jax.tree_util.tree_map(lambda a: a, params)
      argmax_params["params"]["gate_threshold"] = jnp.zeros_like(params["params"]["gate_threshold"])
      a = recon_metrics(tr, argmax_params, images, labels, classifier)
      a.update(router=f"{kind}:argmax", r=r, train_seconds=secs, steps=args.steps)
      print(f"{kind:10s} r={r:.2f} argmax: codes {a['codes_mean']:5.1f} mse {a['mse']:.4f} fd {a['fd']:.3f}", flush=True)
      if on_row is not None:
        on_row(f"{kind}_{r}_argmax", {k: v for k, v in a.items() if k not in ("rec", "mask")}, floor)


def gen_config(tokenizer_wd: str, steps: int, batch: int):
  c = load_config("quickstart_dqtransformer")
  c.tokenizer_workdir = tokenizer_wd
  c.dq_transformer.width = 96
  c.dq_transformer.depth_pos = 2
  c.dq_transformer.depth_content = 2
  c.train.steps = steps
  c.train.batch_size = batch
  c.train.warmup_steps = min(100, steps // 10)
  c.train.ckpt_every = steps
  c.train.log_every = max(steps // 4, 1)
  c.train.final_samples = False
  c.eval.at_end = False
  return c


def phase_gen(args, cache, cmd):
  """DQ-Transformer on the DQ r=0.5 tokenizer vs the raster transformer on the fixed-map r=0.5
  tokenizer (same average code count, 40) and on the uniform fine grid (64 codes)."""
  names = {"gumbel": "DQ-Transformer (DQ-VAE gate r={r:.2f})",
           "gumbelboth": "DQ-Transformer (DQ-VAE gate, both, r={r:.2f})",
           "entropy": "DQ-Transformer (DQ-VAE entropy r={r:.2f})",
           "fixed": "raster transformer (fixed map r={r:.2f})"}
  pairs = []
  for run in args.gen_runs.split(","):
    kind, r = parse_run(run)
    pairs.append((names[kind].format(r=r).replace("fixed map r=1.00", "fixed grid r=1.00"), f"vae_{kind}_{r}"))
  base = vae_config("fixed", 0.0, 1, args.width, args.batch)
  classifier = get_classifier(base.data, cache)
  n = args.gen_samples
  labels = (np.arange(n) % 12).astype(np.int32)
  gens = []
  for name, tok in pairs:
    tok_wd = os.path.join(args.workdir, tok)
    if not os.path.isdir(tok_wd):
      print(f"skip {name}: no tokenizer at {tok_wd} (run --phase recon first)")
      continue
    wd = os.path.join(args.workdir, "gen_" + tok)
    c = gen_config(tok_wd, args.gen_steps, args.batch)
    t0 = time.time()
    train(c, wd, log=lambda m: None)
    tr, params, _ = load_trainer_and_params(wd)
    fn = jax.jit(tr.objective.generate)
    fn(params, jax.random.PRNGKey(0), jnp.asarray(labels[:60])).block_until_ready()    # compile
    gens.append((name, tr, params, fn, time.time() - t0))
  # Timed repetitions interleaved across generators (batch of 60 images each).
  times = {g[0]: [] for g in gens}
  for rep in range(3):
    for name, tr, params, fn, _ in gens:
      t0 = time.perf_counter()
      fn(params, jax.random.PRNGKey(100 + rep), jnp.asarray(labels[:60])).block_until_ready()
      times[name].append((time.perf_counter() - t0) / 60)
  lines = ["| generator | codes/image (mean) | FD | class acc | ms / image (batch 60, median of 3) |",
           "|---|---|---|---|---|"]
  for name, tr, params, fn, secs in gens:
    imgs, codes = [], []
    for s in range(0, n, 60):
      seq = jax.jit(tr.objective.sample_sequences)(params, jax.random.PRNGKey(7 + s), jnp.asarray(labels[s:s + 60]))
      imgs.append(np.asarray(tr.objective.tokenizer.decode(tr.objective.tokenizer_params, seq)))
      codes.append(np.asarray(seq["length"] if "length" in seq else (seq["segment"] != 3).sum(1) - 3))
    imgs = np.clip(np.concatenate(imgs), -1, 1)
    q = evaluate_samples(classifier, imgs, labels)
    ms = 1000 * float(np.median(times[name]))
    lines.append(f"| {name} | {np.concatenate(codes).mean():.1f} | {q['fd']:.3f} | {q['class_acc']:.3f} | {ms:.2f} |")
    print(lines[-1], flush=True)
    tok_name = [t for nm, t in pairs if nm == name][0].replace("vae_", "")
    save_grid(imgs[:48], os.path.join(RESULTS, f"dq_gen_{tok_name}.png"), rows=4, upscale=2)
  return (header(cmd) + f"\nTransformers: width 96, 2 + 2 layers, {args.gen_steps} steps x batch {args.batch}; "
          f"top-k 32, temperature 1; {n} class-balanced samples.\n\n" + "\n".join(lines))


def write_recon(rows: dict, floor, args):
  """rows {run name: metrics} (all runs measured so far in this workdir) -> markdown table."""
  lines = ["| tokenizer | r | train steps | codes/image mean [min-max] | MSE | PSNR (dB) | rFD [95% CI] | class acc of recon |",
           "|---|---|---|---|---|---|---|---|"]
  order = sorted(rows, key=lambda n: (abs(rows[n]["r"] - 0.5) > 1e-9, rows[n]["r"], n))
  for n in order:
    m = rows[n]
    name = RUN_NAMES.get(m["router"], "fixed-grid VQ" if m["r"] in (0.0, 1.0) else "fixed map VQ")
    acc = "" if m["class_acc"] is None else f"{m['class_acc']:.3f}"
    ci = f" [{m['fd_low']:.3f}, {m['fd_high']:.3f}]" if "fd_low" in m else ""
    lines.append(f"| {name} | {m['r']:.2f} | {m.get('steps', '')} | {m['codes_mean']:.1f} [{m['codes_min']}-{m['codes_max']}] | "
                 f"{m['mse']:.4f} | {m['psnr']:.2f} | {m['fd']:.3f}{ci} | {acc} |")
  lines.append(f"\nReal-vs-real FD floor ({args.num_eval} vs {args.num_eval} crops): {floor:.3f}.")
  return "\n".join(lines)


def header(cmd: str) -> str:
  return f"Machine: {machine_line()}. Date: {utc_now()}.\n\nCommand: `{cmd}`\n"


def main():
  p = argparse.ArgumentParser(prog="python -m experiments.bench_dq", description=__doc__.split("\n\n")[0])
  p.add_argument("--phase", choices=("recon", "gen", "all"), default="all")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--width", type=int, default=48)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--num_eval", type=int, default=512)
  p.add_argument("--gen_steps", type=int, default=800)
  p.add_argument("--gen_samples", type=int, default=240)
  p.add_argument("--runs", default=",".join(RECON_RUNS), help="recon runs, e.g. fixed_0.5,gumbel_0.5")
  p.add_argument("--gen_runs", default="gumbel_0.5,entropy_0.5,fixed_0.5,fixed_1.0",
                 help="tokenizers (recon run names) to train a transformer on")
  p.add_argument("--workdir", default="/tmp/adaflow_bench_dq")
  p.add_argument("--out", default=os.path.join(RESULTS, "dq.md"),
                 help="results file (a subset of --runs can go to its own file without replacing dq.md's table)")
  args = p.parse_args()
  os.makedirs(RESULTS, exist_ok=True)
  cache = os.environ.get("ADAFLOW_CACHE") or os.path.join(args.workdir, ".adaflow_cache")
  cmd = "python -m experiments.bench_dq " + " ".join(sys.argv[1:])
  state_path = os.path.join(args.workdir, "sections.json")
  os.makedirs(args.workdir, exist_ok=True)
  sections = json.load(open(state_path)) if os.path.exists(state_path) else {}
  if args.phase in ("recon", "all"):
    def on_row(name, row, floor):
      rows = sections.setdefault("recon_rows", {})
      rows[name] = row
      sections["recon"] = (header(cmd) + f"\nTokenizers: batch {args.batch}, width {args.width}, codebook 256 x 32, "
                           f"EMA 0.99 (small CPU budgets; far from converged). Metrics on {args.num_eval} crops "
                           f"(seed 999).\n\n" + write_recon(rows, floor, args))
      json.dump(sections, open(state_path, "w"))
      write_results(sections, args.out)
    phase_recon(args, cache, on_row)
  if args.phase in ("gen", "all"):
    sections["gen"] = phase_gen(args, cache, cmd)
  json.dump(sections, open(state_path, "w"))
  write_results(sections, args.out)


def write_results(sections, path: str):
  out = ["# DQ-VAE / DQ-Transformer benchmark (experiments/bench_dq.py)", ""]
  if "recon" in sections:
    out += ["## Reconstruction: DQ-VAE vs fixed-grid VQ at equal code budgets", "", sections["recon"], "",
            "Coarse/fine maps (rows: input, DQ reconstruction, map; red = fine region with 4 codes, "
            "blue = coarse region with 1 code): `dq_map_gumbel.png`, `dq_map_gumbelboth.png`, "
            "`dq_map_entropy.png`.", ""]
  if "gen" in sections:
    out += ["## Generation: DQ-Transformer vs raster transformer on fixed VQ codes", "", sections["gen"], ""]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(out))
  print("\n".join(out))


if __name__ == "__main__":
  main()
