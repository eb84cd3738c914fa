"""Does sample quality depend on sampling compute on the evidence testbed? (issue 17's first check)

    python -m experiments.testbed_check --workdir /work/testbed/dense [--num 1000]

Loads the latest checkpoint of a dense run trained with configs/testbed_crops32.py (it may still be
training: the checkpoint is only read), samples `--num` class-balanced images at a few step counts
and solvers with the run's generator and CFG scale, and reports FD with its bootstrap 95% interval
(adaflow.eval), class accuracy, and the real-vs-real floor. Appends nothing, writes
experiments/results/testbed_check.md. The full frontier is `python -m experiments.frontier`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax

from adaflow.eval import get_classifier, real_vs_real_fd
from adaflow.eval.classifier import cache_dir
from adaflow.flow.driver import balanced_labels, generate_images
from adaflow.eval.quality import evaluate_samples
from adaflow.train.loop import load_trainer_and_params
from experiments.common import RESULTS, machine_line, utc_now

SETTINGS = (("heun", 2), ("heun", 4), ("heun", 8), ("heun", 32), ("euler", 8), ("ab2", 8))


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.testbed_check", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="dense run of configs/testbed_crops32.py")
  ap.add_argument("--num", type=int, default=1000, help="samples per setting (and real images per floor half)")
  ap.add_argument("--out", default=os.path.join(RESULTS, "testbed_check.md"))
  args = ap.parse_args()
  if args.num < 10:
    raise ValueError(f"--num: needs at least 10 samples for an FD interval, got {args.num}")
  machine, t0 = machine_line(), time.time()
  tr, params, step = load_trainer_and_params(args.workdir)
  gen = tr.generator()
  clf = get_classifier(tr.config.data, cache_dir(tr.config, args.workdir), seed=int(tr.config.eval.classifier_seed),
                       steps=int(tr.config.eval.classifier_steps))
  floor = real_vs_real_fd(clf, tr.config.data, args.num)
  labels = balanced_labels(args.num, gen.num_classes)
  rows = []
  for method, steps in SETTINGS:
    t = time.time()
    imgs = generate_images(gen, params, tr.mesh, jax.random.PRNGKey(1234), labels, steps=steps, method=method,
                           cfg_scale=float(tr.config.sample.cfg_scale), batch_size=250)
    r = evaluate_samples(clf, imgs, labels)
    rows.append((method, steps, r, time.time() - t))
    print(f"{method} {steps}: FD {r['fd']:.3f} [{r['fd_low']:.3f}, {r['fd_high']:.3f}] acc {r['class_acc']:.3f}",
          flush=True)
  ref = next(r for m, s, r, _ in rows if (m, s) == ("heun", 32))
  four = next(r for m, s, r, _ in rows if (m, s) == ("heun", 4))
  outside = not ref["fd_low"] <= four["fd"] <= ref["fd_high"]
  lines = [
      "# Testbed check: FD vs sampling steps of the dense crops32 base", "",
      f"- {machine}; {utc_now()}.",
      f"- Command: `python -m experiments.testbed_check {' '.join(sys.argv[1:])}` ({time.time() - t0:.0f} s).",
      f"- Model: {args.workdir} at step {step} of {tr.config.train.steps} (configs/testbed_crops32.py, "
      f"CFG {tr.config.sample.cfg_scale}); {args.num} class-balanced samples per row, the same labels and "
      f"noise key for every row; FD = classifier-feature Frechet distance (adaflow.eval, not Inception FID) "
      f"with its bootstrap 95% interval; real-vs-real floor ({args.num} vs {args.num}): {floor:.3f}.", "",
      "| solver | steps | NFE | FD [95% CI] | class acc | seconds (incl. compile) |", "|---|---:|---:|---|---:|---:|"]
  for m, s, r, sec in rows:
    nfe = 2 * s if m == "heun" else s
    lines.append(f"| {m} | {s} | {nfe} | {r['fd']:.3f} [{r['fd_low']:.3f}, {r['fd_high']:.3f}] | "
                 f"{r['class_acc']:.3f} | {sec:.0f} |")
  lines += ["", f"FD at 4 Heun steps is {'outside' if outside else 'INSIDE'} the 95% interval of FD at 32 "
            f"steps: {'quality depends on sampling compute here' if outside else 'the testbed is too easy'}."]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
