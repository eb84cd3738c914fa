"""`adaflow fid` (also `adaflow eval fid`): the FID-50K protocol for a trained workdir.

  adaflow eval fid --workdir W --num 50000 --ref VIRTUAL_imagenet64_labeled.npz \\
      --inception ~/.cache/adaflow/pt_inception-2015-12-05-6726825d.pth [--config.sample.steps=250]

Samples use the checkpoint's EMA params and `config.sample` (override with --config.sample.*; pass
--config=<the run's config file> to change them); the seed is `config.eval.seed`. Shards go to
<workdir>/fid/<tag>/ and a rerun resumes from them. `--ref=dataset[:split]` computes reference
statistics from the run's own dataset (`--fid_ref_num` images), cached under <workdir>/fid/.
`--ref`, `--inception` and `--fid_*` (but --fid_pr*, --fid_progress) set the run's config.eval.fid_*.
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from adaflow import storage
from adaflow.commands.common import FLAGS, Command, load_generator, need, stored_config
from adaflow.config_defaults import base_config
from adaflow.eval.fid.features import check_weights, features_from_config
from adaflow.eval.fid.reference import resolve_reference
from adaflow.eval.fid.run import run_fid, run_tag
from adaflow.flow.driver import balanced_labels
from adaflow.parallel.host import is_writer

# flag -> the config.eval field (FID while training reads it too) it writes; same defaults and "off" values.
EVAL_FIELDS = {"ref": "fid_ref", "inception": "fid_inception", **{f: f for f in (
    "fid_random_inception", "fid_resize", "fid_batch", "fid_gen_batch", "fid_shard", "fid_ref_num", "fid_input_size")}}
_EVAL, _SETS = base_config().eval, "; sets config.eval.{} (not given: the run's value, by default the schema's).".format
flags.DEFINE_string("ref", _EVAL.fid_ref, "Reference: an .npz with mu/sigma, activations or arr_0 images (e.g. "
                    "ADM's VIRTUAL_imagenet64_labeled.npz), or `dataset[:split]`" + _SETS("fid_ref"))
flags.DEFINE_string("inception", _EVAL.fid_inception, "Path to pt_inception-2015-12-05-6726825d.pth (.pth, "
                    ".safetensors or .npz); '' = ~/.cache/adaflow/<that name>" + _SETS("fid_inception"))
flags.DEFINE_integer("fid_random_inception", _EVAL.fid_random_inception, ">= 0: random Inception weights with "
                     "this seed (smoke tests only: the numbers mean nothing); -1 = off" + _SETS("fid_random_inception"))
flags.DEFINE_enum("fid_resize", _EVAL.fid_resize, ["tf", "pytorch"], "Resize to 299: 'tf' (TF1 graph / ADM "
                  "evaluator / torch-fidelity) or 'pytorch' (pytorch-fid)" + _SETS("fid_resize"))
flags.DEFINE_integer("fid_batch", _EVAL.fid_batch, "Images per Inception forward" + _SETS("fid_batch"))
flags.DEFINE_integer("fid_gen_batch", _EVAL.fid_gen_batch, "Images per generation batch" + _SETS("fid_gen_batch"))
flags.DEFINE_integer("fid_shard", _EVAL.fid_shard, "Images per resumable sample shard" + _SETS("fid_shard"))
flags.DEFINE_integer("fid_ref_num", _EVAL.fid_ref_num, "Reference images when --ref=dataset" + _SETS("fid_ref_num"))
flags.DEFINE_integer("fid_input_size", _EVAL.fid_input_size, "Inception input size (299 for real FIDs; tests "
                     "only use less)" + _SETS("fid_input_size"))
flags.DEFINE_bool("fid_pr", False, "Also compute improved precision/recall (k=3).")
flags.DEFINE_integer("fid_pr_num", 10000, "Images per side for precision/recall.")
flags.DEFINE_bool("fid_progress", True, "Show progress bars.")

FID_FLAGS = ("config", "workdir", "num", *EVAL_FIELDS, "fid_pr", "fid_pr_num", "fid_progress")


def fid_main():
  """Inception FID of a trained workdir (the FID-50K protocol; resumable sample shards)."""
  workdir = need("workdir")
  num = FLAGS.num if FLAGS["num"].present else 50000   # the FID-50K protocol
  config = FLAGS.config if FLAGS.config is not None else stored_config(workdir)
  for flag, field in EVAL_FIELDS.items():
    if FLAGS[flag].present:
      config.eval[field] = FLAGS[flag].value
  ec = config.eval
  if not ec.fid_ref:
    raise app.UsageError("--ref is required for this command (the run's config.eval.fid_ref is unset)")
  # Before the checkpoint is restored and anything is sampled (these failed after the work before).
  if num < 2:
    raise app.UsageError(f"--num={num}: FID needs >= 2 images (a covariance)")
  if (ec.fid_ref == "dataset" or ec.fid_ref.startswith("dataset:")) and int(ec.fid_ref_num) < 2:
    raise app.UsageError(f"--fid_ref_num={ec.fid_ref_num}: --ref={ec.fid_ref} needs >= 2 reference images (a covariance)")
  for flag in ("fid_batch", "fid_gen_batch", "fid_shard"):
    if int(ec[flag]) < 1:
      raise app.UsageError(f"--{flag}={ec[flag]}: must be >= 1 (images per batch / per shard file)")
  check_weights(ec)   # missing weights fail before the checkpoint is restored
  generator, params, config, info, mesh, step = load_generator(workdir, config)
  ec = config.eval     # the generator's config: a train-then-prune / compose workdir's is built from `config`
  if info.image_shape[-1] not in (1, 3):
    raise ValueError(f"FID needs 1- or 3-channel images; data has shape {info.image_shape}.")
  features = features_from_config(ec, mesh)
  fid_dir = os.path.join(workdir, "fid")
  storage.makedirs(fid_dir)
  reference, ref_images = resolve_reference(ec.fid_ref, config.data, features, fid_dir,
                                            ref_num=ec.fid_ref_num, with_pr=FLAGS.fid_pr)
  s = config.sample
  seed = int(ec.seed)
  out_dir = os.path.join(fid_dir, run_tag(step, num, seed, s.steps, s.method, s.cfg_scale))
  labels = balanced_labels(num, generator.num_classes)
  result = run_fid(
      generator, params, mesh, out_dir=out_dir, num=num, features=features, reference=reference,
      labels=labels, seed=seed, steps=s.steps, method=s.method, cfg_scale=s.cfg_scale,
      gen_batch=ec.fid_gen_batch, shard_size=ec.fid_shard, with_pr=FLAGS.fid_pr,
      pr_num=FLAGS.fid_pr_num, ref_images=ref_images, progress=FLAGS.fid_progress)
  result["step"] = step
  result["workdir"] = workdir
  if is_writer():
    print(json.dumps(result, indent=2))
  return result


COMMANDS = (Command("fid", fid_main, FID_FLAGS), Command("eval fid", fid_main, FID_FLAGS))
