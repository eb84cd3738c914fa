"""CPU smoke run of the whole ImageNet64 path on TFDS mock data (tests/test_fid.py runs it).

  python -m experiments.imagenet64.smoke /tmp/in64_smoke [--method uncond_smoke]

1. `adaflow train --config experiments/imagenet64/config.py:smoke` on `tfds:imagenet_resized/64x64`
   under `tfds.testing.mock_data` (random 64x64 images, 1000 classes; nothing downloaded), or
   `:uncond_smoke` on `tfds:downsampled_imagenet/64x64` (no labels: an unconditional model; its mock
   images have random sizes, resized to 64x64);
2. `adaflow eval fid --num 8 --ref dataset` with a random-weight Inception at 75x75 input
   (`--fid_random_inception=0 --fid_input_size=75`): reference statistics from the mock dataset,
   sharded resumable generation, features, float64 statistics, FID and Inception Score.
The numbers mean nothing (random data, random Inception); the run checks that every stage of the
real path (data -> train -> checkpoint -> restore -> generate -> Inception -> FID) connects.
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config.py")


def run_smoke(workdir: str, num: int = 8, shard: int = 4, extra_fid_flags=(), method: str = "smoke") -> dict:
  """Trains the `method` smoke config and runs `adaflow eval fid` on it; returns the FID result dict."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from adaflow.cli import COMMANDS  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=16):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["adaflow", f"--config={CONFIG}:{method}", f"--workdir={workdir}"])
    COMMANDS["train"]()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["adaflow", f"--config={CONFIG}:{method}", f"--workdir={workdir}", f"--num={num}",
                 "--ref=dataset", f"--fid_ref_num={num}", "--fid_random_inception=0",
                 "--fid_input_size=75", "--fid_batch=4", "--fid_gen_batch=4", f"--fid_shard={shard}",
                 "--fid_progress=false", *extra_fid_flags])
    result = COMMANDS["eval fid"]()
  flags.FLAGS.unparse_flags()
  return result


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m experiments.imagenet64.smoke", description=__doc__.split("\n\n")[0])
  ap.add_argument("workdir", nargs="?", default="/tmp/adaflow_in64_smoke", help="the smoke run's workdir")
  ap.add_argument("--method", default="smoke", choices=("smoke", "uncond_smoke"),
                  help="class-conditional (imagenet_resized) or unconditional (downsampled_imagenet) smoke config")
  args = ap.parse_args(argv)
  print(json.dumps(run_smoke(args.workdir, method=args.method), indent=2))


if __name__ == "__main__":
  main()
