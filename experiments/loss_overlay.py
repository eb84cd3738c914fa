"""Train-loss curves of the same config under two versions of the code, overlaid (issue #28 item 4).

Trains `configs/<config>.py` for `--steps` steps with `adaflow train` once with the code of git
revision `--ref` (exported with `git archive` into a temporary directory, run from there) and once
with this checkout, for each `model.dtype` in `--dtypes`, each run in a fresh process, one after
the other. Same config, same seeds, same data order: where the two versions compute the same
numbers the curves coincide step for step; where a change of numerics slipped in, the table shows
by how much. Writes a markdown table and a PNG of the overlaid curves.

  python -m experiments.loss_overlay --ref 106ec08 --steps 1000 \
      --out experiments/results/loss_overlay.md --png experiments/results/loss_overlay.png
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.common import ROOT, export_revision, git, machine_line, utc_now, write_report


def train_losses(code_root: str, config: str, workdir: str, steps: int, log_every: int, dtype: str) -> tuple[list, list, float]:
  """Runs `python -m adaflow.cli train` with the package found in `code_root` -> (steps, losses, seconds)."""
  env = dict(os.environ, PYTHONPATH=code_root, PYTHONUNBUFFERED="1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  name, _, arg = config.partition(":")   # "testbed_crops32:smoke" -> configs/testbed_crops32.py:smoke
  config_path = os.path.join(code_root, "configs", name + ".py") + (f":{arg}" if arg else "")
  args = [sys.executable, "-m", "adaflow.cli", "train", f"--config={config_path}",
          f"--workdir={workdir}", f"--config.train.steps={steps}", f"--config.train.log_every={log_every}",
          f"--config.train.ckpt_every={steps}", "--config.train.final_samples=False", f"--config.model.dtype={dtype}"]
  t0 = time.perf_counter()
  with open(os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "w") as log:
    proc = subprocess.run(args, cwd=code_root, env=env, stdout=log, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"training with the code in {code_root} failed (exit {proc.returncode}); see {log.name}")
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
  rows = [r for r in rows if r.get("kind") == "train" and "loss" in r]
  return [r["step"] for r in rows], [r["loss"] for r in rows], seconds


def report(args, ref_name: str, head_name: str, curves: dict, header: str, started: str) -> str:
  lines = [f"# Train loss of configs/{args.config}.py, {args.steps} steps: the code of {ref_name} against {head_name}",
           "", f"- {header}; {started}.",
           f"- Command: `python -m experiments.loss_overlay {' '.join(sys.argv[1:])}`",
           f"- Each run: `adaflow train --config configs/{args.config}.py --config.train.steps={args.steps} "
           f"--config.train.log_every={args.log_every} --config.model.dtype=DTYPE` (final samples off), in a fresh "
           "process, one after the other; the reference code exported with `git archive` and run from there. "
           "The logged loss is the mean over each logging window.", "",
           "| model.dtype | logged points | identical points | max abs difference | max relative difference "
           f"| mean loss, last 10% ({ref_name}) | mean loss, last 10% ({head_name}) | run time {ref_name} (s) | run time {head_name} (s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for dtype, (ref, head) in curves.items():
    if ref[0] != head[0]:
      lines.append(f"| {dtype} | logged steps differ: {len(ref[0])} vs {len(head[0])} | | | | | | | |")
      continue
    a, b = np.asarray(ref[1]), np.asarray(head[1])
    tail = max(1, len(a) // 10)
    lines.append(f"| {dtype} | {len(a)} | {int(np.sum(a == b))} | {np.max(np.abs(a - b)):.3g} | "
                 f"{np.max(np.abs(a - b) / np.abs(a)):.3g} | {a[-tail:].mean():.5f} | {b[-tail:].mean():.5f} | "
                 f"{ref[2]:.0f} | {head[2]:.0f} |")
  return "\n".join(lines) + "\n"


def plot(curves: dict, ref_name: str, head_name: str, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
  for ax, (dtype, (ref, head)) in zip(axes[0], curves.items()):
    ax.plot(ref[0], ref[1], lw=2.5, alpha=0.6, label=ref_name)
    ax.plot(head[0], head[1], lw=1, ls="--", color="k", label=head_name)
    ax.set(title=f"model.dtype={dtype}", xlabel="step", ylabel="train loss (mean over log window)", yscale="log")
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ref", default="106ec08", help="git revision of the reference code (default: the code when #28 was filed)")
  p.add_argument("--config", default="testbed_crops32",
                 help="configs/<name>.py (or <name>:<arg> for get_config(arg)), present in both versions")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--dtypes", default="auto,float32", help="comma-separated model.dtype values, one pair of runs each")
  p.add_argument("--out", default=None)
  p.add_argument("--png", default=None)
  args = p.parse_args()
  dtypes = [d for d in args.dtypes.split(",") if d]
  ref_name = f"{git('rev-parse', '--short', args.ref)} ({git('log', '-1', '--format=%ad', '--date=short', args.ref)})"
  dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
  head_name = f"{git('rev-parse', '--short', 'HEAD')}{dirty}"
  header, started = machine_line(), utc_now()
  curves = {}
  with tempfile.TemporaryDirectory(prefix="adaflow-overlay-") as tmp:
    ref_root = os.path.join(tmp, "ref_code")
    os.makedirs(ref_root)
    export_revision(args.ref, ref_root)
    for dtype in dtypes:
      pair = []
      for name, code_root in (("ref", ref_root), ("head", ROOT)):
        print(f"[loss_overlay] dtype={dtype}: training with the {name} code ({args.steps} steps) ...", flush=True)
        pair.append(train_losses(code_root, args.config, os.path.join(tmp, f"{name}_{dtype}"), args.steps, args.log_every, dtype))
        print(f"[loss_overlay]   done in {pair[-1][2]:.0f} s, final logged loss {pair[-1][1][-1]:.5f}", flush=True)
      curves[dtype] = tuple(pair)
  text = report(args, ref_name, head_name, curves, header, started)
  if args.png:
    plot(curves, ref_name, head_name, args.png, f"configs/{args.config}.py, {args.steps} steps")
    text += f"\n![overlay]({os.path.basename(args.png)})\n"
  write_report(text, args.out)


if __name__ == "__main__":
  main()
