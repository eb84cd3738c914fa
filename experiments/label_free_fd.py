"""Does the label-free FD rank sampling quality like the classifier FD? (issue #27)

    python -m experiments.label_free_fd --base /work/testbed/dense --cache /tmp/lffd_cache \
        --out experiments/results/label_free_fd.md

Loads a trained crops-testbed workdir (`configs/testbed_crops32.py`; read only), samples the same
`--num` class-balanced images (same labels and noise) at each of `--steps` (default 4 and 32) with
the run's solver and `--cfg` (default 1: the label-free FD is for unconditional models, which are
not guided), and scores every set with three feature networks of the same architecture and
training recipe, each trained on real images only:

* the evaluation classifier (`task="classes"`, the crops labels): the FD adaflow reports for
  labeled data;
* the exemplar network (`task="instances"`: 512 real images told apart, no labels; Dosovitskiy et
  al. 2014): the FD adaflow reports for unlabeled data (adaflow/eval/classifier.py);
* a rotation network (4 rotations as labels, Gidaris et al. 2018; built here, not in adaflow): the
  label-free task suggested first, kept for comparison.

The first two are cached in `--cache` like adaflow's own. Each FD has its 95% bootstrap interval
(adaflow/eval/bootstrap.py), and the real-vs-real floor (two disjoint sets of `--num` real images)
is printed beside it. The question: does each network separate the step counts with
non-overlapping intervals?
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from adaflow import data as data_lib
from adaflow.eval import classifier as clf_lib
from adaflow.eval.quality import evaluate_samples, real_vs_real_fd
from adaflow.flow.driver import balanced_labels, generate_images
from adaflow.parallel.precision import cpu_flags
from adaflow.train.loop import load_trainer_and_params

NETWORKS = (("classifier (labels)", "classes"), ("exemplar network (no labels; adaflow's)", "instances"),
            ("rotation network (no labels; for comparison)", "rotation"))


def rotation_network(data_config, seed: int) -> clf_lib.FeatureClassifier:
  """ClassifierNet trained with the classifier's recipe to tell which of 4 rotations (0, 90, 180, 270
  degrees, drawn per image from `seed`) each real image shows; accuracy on 10% held-out images."""
  images, _ = data_lib.load_arrays(data_config, clf_lib.MAX_TRAIN_EXAMPLES, seed=seed)
  k = np.random.RandomState(seed).randint(0, 4, len(images))
  turned = np.stack([np.rot90(x, r, axes=(0, 1)) for x, r in zip(images, k)])
  held = len(images) // 10
  params = clf_lib.train_classifier(turned[held:], k[held:], 4, seed=seed)
  net = clf_lib.FeatureClassifier(params, 4, images.shape[1:], task="rotation")
  net.heldout_accuracy = net.accuracy(turned[:held], k[:held])
  net.reference_stats = net.feature_statistics(images)
  return net


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--base", default="/work/testbed/dense", help="trained crops testbed workdir (read only)")
  p.add_argument("--cache", required=True, help="where the classifier and exemplar network are cached")
  p.add_argument("--num", type=int, default=1000, help="samples per step count")
  p.add_argument("--steps", default="4,32", help="comma-separated step counts")
  p.add_argument("--method", default="", help="solver; default the run's sample.method")
  p.add_argument("--cfg", type=float, default=1.0, help="CFG scale (1 = none, as for an unconditional model)")
  p.add_argument("--seed", type=int, default=1234)
  p.add_argument("--out", default="", help="markdown report path")
  args = p.parse_args(argv)
  t0 = time.time()
  load = os.getloadavg()
  tr, params, step = load_trainer_and_params(args.base)
  c = tr.config
  method = args.method or c.sample.method
  seed = int(c.eval.classifier_seed)
  nets = {task: get() for task, get in (
      ("classes", lambda: clf_lib.get_classifier(c.data, args.cache, seed=seed, task="classes")),
      ("instances", lambda: clf_lib.get_classifier(c.data, args.cache, seed=seed, task="instances")),
      ("rotation", lambda: rotation_network(c.data, seed)))}
  floors = {task: real_vs_real_fd(net, c.data, args.num) for task, net in nets.items()}
  labels = balanced_labels(args.num, tr.info.num_classes)
  rows = {}
  for n in (int(s) for s in args.steps.split(",")):
    ts = time.time()
    imgs = generate_images(tr.generator(), params, tr.mesh, jax.random.PRNGKey(args.seed), labels, steps=n,
                           method=method, cfg_scale=args.cfg, batch_size=250)
    rows[n] = {task: evaluate_samples(net, imgs, labels) for task, net in nets.items()}
    print(f"{method} {n} steps: sampled in {time.time() - ts:.0f}s; "
          + "; ".join(f"{task} FD {r['fd']:.3f} [{r['fd_low']:.3f}, {r['fd_high']:.3f}]" for task, r in rows[n].items()),
          flush=True)

  steps = sorted(rows)
  lines = [
      "# Label-free FD vs classifier FD on the crops testbed (issue #27)", "",
      f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}. Machine: {os.cpu_count()}-core CPU, flags "
      f"{' '.join(f for f in ('avx2', 'avx512_bf16', 'amx_bf16') if f in cpu_flags())}; load average "
      f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the start (other jobs shared the 2 cores); "
      f"jax {jax.__version__}; {time.time() - t0:.0f} s in all.",
      f"Command: `python -m experiments.label_free_fd {' '.join(sys.argv[1:] if argv is None else argv)}`.",
      f"Model: {args.base} (read only) at step {step}: {c.name}, {c.data.name} {c.data.image_size}x{c.data.image_size}, "
      f"DiT width {c.model.hidden_size} depth {c.model.depth} patch {c.model.patch_size}. Samples: {args.num} "
      f"class-balanced per step count, the same labels and noise (seed {args.seed}), {method}, CFG {args.cfg:g}.",
      f"Feature networks: ClassifierNet (adaflow/eval/classifier.py), one training recipe (300 Adam steps of 64, "
      f"random shifts), seed {seed}, trained on real crops only. Classifier: the 12 crops labels, held-out accuracy "
      f"{nets['classes'].heldout_accuracy:.3f}. Exemplar network (adaflow's FD without labels): "
      f"{nets['instances'].num_classes} real images told apart under shifts of up to {clf_lib.INSTANCE_SHIFT} px, "
      f"accuracy on the mirrored exemplars {nets['instances'].heldout_accuracy:.3f}. Rotation network (for "
      f"comparison, built by this script): 4 rotations as labels, held-out accuracy "
      f"{nets['rotation'].heldout_accuracy:.3f} (chance 0.25: most crops are textures without an up). "
      "FD intervals: 95% bootstrap (200 resamples, bias-corrected; adaflow/eval/bootstrap.py); reference "
      f"statistics over {clf_lib.MAX_TRAIN_EXAMPLES} real crops.", "",
      "| feature network | real-vs-real floor | " + " | ".join(f"FD at {n} steps [95% CI]" for n in steps)
      + " | intervals overlap |",
      "|---|---:|" + "---:|" * len(steps) + "---|"]
  for name, task in NETWORKS:
    r = [rows[n][task] for n in steps]
    overlap = any(a["fd_low"] <= b["fd_high"] and b["fd_low"] <= a["fd_high"] for i, a in enumerate(r) for b in r[i + 1:])
    lines.append(f"| {name} | {floors[task]:.3f} | "
                 + " | ".join(f"{x['fd']:.3f} [{x['fd_low']:.3f}, {x['fd_high']:.3f}]" for x in r)
                 + f" | {'yes' if overlap else 'no'} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return text


if __name__ == "__main__":
  main()
