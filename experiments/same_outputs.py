"""Checks that a refactor changes no number: runs every method through the CLI on the code of two git
revisions and compares what the runs wrote (issue #26: "nothing changes in results").

Each revision is exported with `git archive` (or `checkout`: this working tree, uncommitted changes
included) and run from there with that directory on PYTHONPATH, each in its own output folder, with
no compilation cache. The chain (short runs of the quick-start configs, so it takes minutes, not hours):

  dense: train 30 steps + evaluation      ppflow / routed: train 20 steps + evaluation
  grouped: stage 1 20 steps, pruning, stage 2 6 steps per group, evaluation
  dqvae: train 20 steps      dqt: DQ-Transformer 20 steps on that tokenizer
  adadiff: the step policy 6 steps on the dense run
  sample_selector / sample_dense / sample_dq: `adaflow sample` of those runs (DQ: + its code map)
  composed: `adaflow compose` with every method on, a few steps per stage, evaluation

Compared: every .json / .jsonl value except timings (metrics' "time", keys ending in seconds / per_second)
and paths (the two output folders), and every .png / .npz / .npy byte for byte. Checkpoints, the
evaluation network's cache (orbax names its files at random) and TensorBoard files are skipped: the
losses, gradient norms, FDs and images they lead to are compared instead.

  python -m experiments.same_outputs --revs 937d6cd,checkout [--only dense,routed] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from experiments.common import ROOT, export_revision, machine_line, utc_now

_EVAL = ("--config.eval.num_samples=64", "--config.train.log_every=5", "--config.train.ckpt_every=1000")
_SHORT = ("--config.train.warmup_steps=5",)


def chain(out: str) -> list[tuple[str, tuple[str, ...], list[str]]]:
  """[(step, steps it needs, adaflow arguments)] writing under `out`; configs are read from the
  exported tree (the working directory)."""
  c = "configs/"
  return [
      ("dense", (), ["train", "--config", c + "quickstart.py", "--workdir", f"{out}/dense",
                     "--config.train.steps=30", *_SHORT, *_EVAL]),
      ("ppflow", (), ["train", "--config", c + "quickstart_ppflow2.py", "--workdir", f"{out}/ppflow",
                      "--config.train.steps=20", *_SHORT, *_EVAL]),
      ("routed", (), ["train", "--config", c + "quickstart_routed.py", "--workdir", f"{out}/routed",
                      "--config.train.steps=20", *_SHORT, *_EVAL]),
      ("grouped", (), ["train", "--config", c + "quickstart_grouped.py", "--workdir", f"{out}/grouped",
                       "--config.grouped.stage1_steps=20", "--config.grouped.stage2_steps=6",
                       "--config.grouped.stage2_warmup_steps=2", *_SHORT, *_EVAL]),
      ("dqvae", (), ["train", "--config", c + "quickstart_dqvae.py", "--workdir", f"{out}/dqvae",
                     "--config.train.steps=20", *_SHORT, "--config.train.log_every=5"]),
      ("dqt", ("dqvae",), ["train", "--config", c + "quickstart_dqtransformer.py", "--workdir", f"{out}/dqt",
                           "--tokenizer", f"{out}/dqvae", "--config.train.steps=20", *_SHORT,
                           "--config.train.log_every=5"]),
      ("adadiff", ("dense",), ["train", "--config", c + "quickstart_adadiff.py", "--init", f"{out}/dense",
                               "--workdir", f"{out}/adadiff", "--config.train.steps=6",
                               "--config.train.warmup_steps=2", "--config.train.log_every=2"]),
      ("sample_selector", ("adadiff",), ["sample", "--selector", f"{out}/adadiff", "--num", "8",
                                         "--out", f"{out}/selector.png"]),
      ("sample_dense", ("dense",), ["sample", "--workdir", f"{out}/dense", "--num", "16",
                                    "--out", f"{out}/dense.png"]),
      ("sample_dq", ("dqt",), ["sample", "--workdir", f"{out}/dqt", "--num", "8", "--out", f"{out}/dqt.png"]),
      ("composed", (), ["compose", "--config", c + "quickstart_composed.py", "--workdir", f"{out}/composed",
                        "--config.compose.dense_steps=20", "--config.compose.ppflow_steps=6",
                        "--config.compose.routing_steps=6", "--config.compose.grouped_steps=6",
                        "--config.compose.selector_steps=4", "--config.train.warmup_steps=2", *_EVAL]),
  ]


def selected_steps(only: set[str] | None) -> set[str]:
  """The steps to run: all, or `only` with the steps they need (a sample step runs when what it
  samples does)."""
  steps = chain("")
  if only is None:
    return {name for name, _, _ in steps}
  chosen = set(only)
  for name, needs, _ in reversed(steps):        # needs come earlier in the chain
    if name in chosen:
      chosen |= set(needs)
  return chosen | {name for name, needs, _ in steps if name.startswith("sample_") and set(needs) <= chosen}


def run_chain(code_root: str, out: str, steps: set[str]) -> float:
  """Runs the chosen steps with the package in `code_root` -> wall seconds; exits with the log's
  tail on a failure."""
  env = dict(os.environ, PYTHONPATH=code_root, JAX_COMPILATION_CACHE_DIR="", PYTHONUNBUFFERED="1")
  t0 = time.perf_counter()
  for k, (name, _, args) in enumerate(chain(out)):
    if name not in steps:
      continue
    log = os.path.join(out, f"log_{k:02d}_{name}.txt")
    print(f"  adaflow {' '.join(args)}", flush=True)
    with open(log, "w") as f:
      proc = subprocess.run([sys.executable, "-m", "adaflow.cli", *args], cwd=code_root, env=env, stdout=f,
                            stderr=subprocess.STDOUT)
    if proc.returncode:
      with open(log) as f:
        tail = f.read()[-3000:]
      raise SystemExit(f"adaflow {' '.join(args[:3])} failed (exit {proc.returncode}) with {code_root}:\n{tail}")
  return time.perf_counter() - t0


_SKIP_DIRS = ("checkpoints", "tb", ".adaflow_cache")


def _clean(value, roots: tuple[str, str]):
  """`value` without timings (metrics' "time", "*_seconds", "*_per_second"), with the two output
  folders' paths made equal."""
  if isinstance(value, dict):
    return {k: _clean(v, roots) for k, v in value.items() if k != "time" and not k.endswith(("seconds", "per_second"))}
  if isinstance(value, list):
    return [_clean(v, roots) for v in value]
  if isinstance(value, str):
    return value.replace(roots[0], "@").replace(roots[1], "@")
  return value


def _read(path: str, roots: tuple[str, str]):
  with open(path) as f:
    if path.endswith(".jsonl"):
      return [_clean(json.loads(line), roots) for line in f if line.strip()]
    return _clean(json.load(f), roots)


def _compared_files(root: str) -> set[str]:
  """Paths (relative to `root`) of the outputs compared: json/jsonl/png/npz/npy outside _SKIP_DIRS."""
  found = set()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
    found |= {os.path.relpath(os.path.join(dirpath, n), root) for n in filenames
              if n.endswith((".json", ".jsonl", ".png", ".npz", ".npy"))}
  return found


def compare(a: str, b: str) -> tuple[int, list[str]]:
  """(files compared, differences) between two chain output folders."""
  files_a, files_b = _compared_files(a), _compared_files(b)
  diffs = [f"{rel}: only in the first revision's output" for rel in sorted(files_a - files_b)]
  diffs += [f"{rel}: only in the second revision's output" for rel in sorted(files_b - files_a)]
  for rel in sorted(files_a & files_b):
    pa, pb = os.path.join(a, rel), os.path.join(b, rel)
    if rel.endswith((".json", ".jsonl")):
      if _read(pa, (a, b)) != _read(pb, (a, b)):
        diffs.append(f"{rel}: values differ")
    else:
      with open(pa, "rb") as fa, open(pb, "rb") as fb:
        if fa.read() != fb.read():
          diffs.append(f"{rel}: bytes differ")
  return len(files_a | files_b), diffs


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--revs", required=True, help="two git revisions, comma-separated; 'checkout' = this working tree")
  p.add_argument("--only", default="", help="comma-separated chain steps (dense, ppflow, routed, grouped, dqvae, "
                                            "dqt, adadiff, sample_*, composed) and what they need; default all")
  p.add_argument("--keep", default="", help="folder to keep both revisions' outputs in (default: removed)")
  args = p.parse_args()
  revs = [r.strip() for r in args.revs.split(",") if r.strip()]
  if len(revs) != 2:
    raise SystemExit("--revs: give exactly two revisions, e.g. --revs 937d6cd,checkout")
  names = {name for name, _, _ in chain("")}
  only = {s.strip() for s in args.only.split(",") if s.strip()} or None
  if only and not only <= names:
    raise SystemExit(f"--only: unknown steps {sorted(only - names)}; use some of {sorted(names)}")
  steps = selected_steps(only)
  if args.keep and os.path.exists(args.keep) and os.listdir(args.keep):
    raise SystemExit(f"--keep {args.keep}: not empty (a workdir there would be resumed, not retrained); "
                     "name a new folder")
  for r in revs:      # a bad revision fails here, before minutes of training
    if r != "checkout" and subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{r}^{{commit}}"], cwd=ROOT,
                                          capture_output=True).returncode:
      raise SystemExit(f"--revs: {r!r} is not a commit of this repository")
  work = tempfile.mkdtemp(prefix="adaflow-same-outputs-")
  print(f"{utc_now()}; {machine_line()}")
  outs = []
  try:
    for i, r in enumerate(revs):
      root = ROOT if r == "checkout" else None
      if root is None:
        root = os.path.join(work, f"code{i}")
        os.makedirs(root)
        export_revision(r, root)
      out = os.path.join(args.keep or work, f"out{i}")
      os.makedirs(out)
      print(f"{r}: running the chain into {out}", flush=True)
      print(f"{r}: {run_chain(root, out, steps):.0f} s", flush=True)
      outs.append(out)
    n, diffs = compare(*outs)
    print(f"{n} files compared (json/jsonl values except timings, png/npz/npy bytes), {len(diffs)} differ")
    for d in diffs:
      print("  " + d)
    if diffs:
      raise SystemExit(1)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
