"""`adaflow fid` (also `adaflow eval fid`): the FID-50K protocol for a trained workdir.

  adaflow eval fid --workdir W --num 50000 --ref VIRTUAL_imagenet64_labeled.npz \\
      --inception ~/.cache/adaflow/pt_inception-2015-12-05-6726825d.pth [--config.sample.steps=250]

Samples use the checkpoint's EMA params and `config.sample` (override with --config.sample.*; pass
--config=<the run's config file> to change them); the seed is `config.eval.seed`. Shards go to
<workdir>/fid/<tag>/ and a rerun resumes from them. `--ref=dataset[:split]` computes reference
statistics from the run's own dataset (`--fid_ref_num` images), cached under <workdir>/fid/.
"""
from __future__ import annotations

import json
import os

from absl import flags

from adaflow import storage
from adaflow.commands.registry import FLAGS, command, need
from adaflow.eval.fid.features import build_inception_features
from adaflow.eval.fid.reference import resolve_reference
from adaflow.eval.fid.run import run_fid, run_tag
from adaflow.eval import inception as inception_lib
from adaflow.flow.driver import balanced_labels
from adaflow.parallel.host import is_writer
from adaflow.train.loop import load_trainer_and_params

flags.DEFINE_string("ref", None, "Reference: an .npz with mu/sigma, activations or arr_0 images "
                    "(e.g. ADM's VIRTUAL_imagenet64_labeled.npz), or `dataset[:split]`.")
flags.DEFINE_string("inception", None, "Path to pt_inception-2015-12-05-6726825d.pth (.pth, "
                    ".safetensors or .npz); default ~/.cache/adaflow/<that name>.")
flags.DEFINE_integer("fid_random_inception", None, "Use random Inception weights with this seed "
                     "(smoke tests only: the numbers mean nothing).")
flags.DEFINE_enum("fid_resize", "tf", ["tf", "pytorch"], "Resize to 299: 'tf' (TF1 graph / ADM "
                  "evaluator / torch-fidelity) or 'pytorch' (pytorch-fid).")
flags.DEFINE_integer("fid_batch", 200, "Images per Inception forward.")
flags.DEFINE_integer("fid_gen_batch", 256, "Images per generation batch.")
flags.DEFINE_integer("fid_shard", 1000, "Images per resumable sample shard.")
flags.DEFINE_integer("fid_ref_num", 50000, "Reference images when --ref=dataset.")
flags.DEFINE_bool("fid_pr", False, "Also compute improved precision/recall (k=3).")
flags.DEFINE_integer("fid_pr_num", 10000, "Images per side for precision/recall.")
flags.DEFINE_integer("fid_input_size", 299, "Inception input size (299 for real FIDs; tests only "
                     "use less).")
flags.DEFINE_bool("fid_progress", True, "Show progress bars.")

DEFAULT_NUM = 50000


def fid_main():
  """Inception FID of a trained workdir (the FID-50K protocol; resumable sample shards)."""
  workdir = need("workdir")
  ref_arg = need("ref")
  num = FLAGS.num if FLAGS["num"].present else DEFAULT_NUM
  if FLAGS.fid_random_inception is None:   # fail on missing weights before restoring anything
    path = os.path.expanduser(FLAGS.inception) if FLAGS.inception else inception_lib.default_weights_path()
    if not os.path.isfile(path):
      raise ValueError(inception_lib.missing_weights_message(path))
  tr, params, step = load_trainer_and_params(workdir, FLAGS.config)
  config = tr.config
  if tr.info.image_shape[-1] not in (1, 3):
    raise ValueError(f"FID needs 1- or 3-channel images; data has shape {tr.info.image_shape}.")
  features = build_inception_features(
      FLAGS.inception, random_seed=FLAGS.fid_random_inception, resize=FLAGS.fid_resize,
      batch_size=FLAGS.fid_batch, size=FLAGS.fid_input_size, mesh=tr.mesh)
  fid_dir = os.path.join(workdir, "fid")
  storage.makedirs(fid_dir)
  reference, ref_images = resolve_reference(ref_arg, config.data, features, fid_dir,
                                            ref_num=FLAGS.fid_ref_num, with_pr=FLAGS.fid_pr)
  s = config.sample
  seed = int(config.eval.seed)
  out_dir = os.path.join(fid_dir, run_tag(step, num, seed, s.steps, s.method, s.cfg_scale))
  labels = balanced_labels(num, tr.objective.num_classes)
  result = run_fid(
      tr.generator(), params, tr.mesh, out_dir=out_dir, num=num, features=features, reference=reference,
      labels=labels, seed=seed, steps=s.steps, method=s.method, cfg_scale=s.cfg_scale,
      gen_batch=FLAGS.fid_gen_batch, shard_size=FLAGS.fid_shard, with_pr=FLAGS.fid_pr,
      pr_num=FLAGS.fid_pr_num, ref_images=ref_images, progress=FLAGS.fid_progress)
  result["step"] = int(step)
  result["workdir"] = workdir
  if is_writer():
    print(json.dumps(result, indent=2))
  return result


FID_FLAGS = ("config", "workdir", "num", "ref", "inception", "fid_random_inception", "fid_resize", "fid_batch",
             "fid_gen_batch", "fid_shard", "fid_ref_num", "fid_pr", "fid_pr_num", "fid_input_size", "fid_progress")
command("fid", FID_FLAGS)(fid_main)
command("eval fid", FID_FLAGS)(fid_main)
