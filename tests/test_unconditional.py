"""Unconditional generation (issue #27): data without labels trains, samples and evaluates; what
cannot run without labels is refused before training; conditional runs restore unchanged."""
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from adaflow import data
from adaflow import methods
from adaflow.config_defaults import base_config
from adaflow.flow.driver import generate_images
from conftest import ROOT, tiny_config

FOLDER_CONFIG = os.path.join(ROOT, "configs", "folder.py")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "conditional_v1")


def write_images(folder, n, size=16, seed=0):
  """n smooth random RGB images (colour gradients) as PNGs in `folder`."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0.0, 1.0, size)
  for i in range(n):
    a, b = rng.uniform(0, 255, (2, 3))
    img = a + (b - a) * (ramp[:, None, None] if i % 2 else ramp[None, :, None])
    Image.fromarray(np.broadcast_to(img, (size, size, 3)).astype(np.uint8)).save(os.path.join(folder, f"{i:03d}.png"))


def folder_config(root, **over):
  c = base_config()
  c.data.name, c.data.data_dir, c.data.image_size, c.data.channels = "folder", str(root), 16, 3
  for k, v in over.items():
    c.data[k] = v
  return c.data


# ---- data ---------------------------------------------------------------------------------------

def test_flat_folder_is_one_unlabeled_dataset(tmp_path):
  write_images(tmp_path, 5)
  (tmp_path / "notes").mkdir()                       # a subfolder without images is ignored
  info = data.get_info(folder_config(tmp_path))
  assert info == data.DatasetInfo((16, 16, 3), 0, 5, ())
  src = data.make_source(folder_config(tmp_path))
  assert [int(src[i]["label"]) for i in range(5)] == [0] * 5


def test_one_class_folder_is_unlabeled_and_mixed_layout_is_refused(tmp_path):
  write_images(tmp_path / "cats", 4)
  assert data.get_info(folder_config(tmp_path)).num_classes == 0
  write_images(tmp_path / "dogs", 3)
  assert data.get_info(folder_config(tmp_path)).num_classes == 2
  write_images(tmp_path, 2)                          # images beside class subfolders: which is meant?
  with pytest.raises(ValueError, match="both directly and in subfolders.*data.use_labels=False"):
    data.get_info(folder_config(tmp_path))
  unlabeled = folder_config(tmp_path, use_labels=False)
  assert data.get_info(unlabeled) == data.DatasetInfo((16, 16, 3), 0, 9, ())
  assert {int(data.make_source(unlabeled)[i]["label"]) for i in range(9)} == {0}


def test_use_labels_false_drops_the_labels_of_embedded_data():
  c = tiny_config(**{"data.use_labels": False})
  assert data.get_info(c.data).num_classes == 0
  assert set(data.make_train_batches(c.data, global_batch_size=16, seed=0)[0]["label"].tolist()) == {0}
  with pytest.raises(ValueError, match="data.use_labels"):
    data.get_info({"name": "digits", "image_size": 16, "use_labels": "no"})   # a plain dict is not type-checked


def test_tfds_without_a_label_feature_is_unlabeled():
  tfds = pytest.importorskip("tensorflow_datasets")
  c = tiny_config(**{"data.name": "tfds:cifar10", "data.image_size": 32, "data.label_key": None})
  with tfds.testing.mock_data(num_examples=16):
    assert data.get_info(c.data).num_classes == 0
    assert set(data.make_train_batches(c.data, global_batch_size=8, seed=0)[1]["label"].tolist()) == {0}


# ---- validation: what cannot run without labels fails before training --------------------------

def test_guidance_and_label_rewards_are_refused_without_labels():
  c = tiny_config(**{"data.use_labels": False})
  info = data.get_info(c.data)
  with pytest.raises(ValueError, match=r"^config.sample.cfg_scale: 2.0 asks for classifier-free guidance.*"
                                       r"--config.sample.cfg_scale=1$") as err:
    methods.validate(c, info)
  assert "\n" not in str(err.value)
  c.sample.cfg_scale = 1.0
  methods.validate(c, info)
  s = tiny_config(**{"data.use_labels": False, "objective": "step_selector", "selector.generator_workdir": "/g",
                     "selector.quality": "classifier"})
  with pytest.raises(ValueError, match="config.selector.quality: 'classifier' rewards"):
    methods.validate(s, info)
  s.selector.quality, s.selector.cfg_scale = "closeness", 3.0
  with pytest.raises(ValueError, match="config.selector.cfg_scale: 3.0"):
    methods.validate(s, info)
  s.selector.cfg_scale = -1.0                     # the generator's own (unconditional: 1)
  methods.validate(s, info)


def test_evaluation_the_data_cannot_run_is_refused_before_training(tmp_path):
  from adaflow.train.loop import train
  write_images(tmp_path / "imgs", 4, size=12)
  c = tiny_config(**{"data.name": "folder", "data.data_dir": str(tmp_path / "imgs"), "data.image_size": 12,
                     "data.channels": 3, "model.patch_size": 2, "sample.cfg_scale": 1.0, "eval.at_end": True})
  with pytest.raises(ValueError, match="config.eval.at_end: the built-in FD's feature network"):
    train(c, str(tmp_path / "w"), log=lambda m: None)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


# ---- end to end ---------------------------------------------------------------------------------

def run_command(command, *argv):
  """`adaflow <command> <argv>` in this process (as experiments/imagenet64/smoke.py does; config_flags
  finds `--config.*` overrides in sys.argv)."""
  from adaflow.cli import COMMANDS
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:   # the last parse's overrides
    delattr(flags.FLAGS, name)
  saved, sys.argv = sys.argv, ["adaflow", *argv]
  try:
    flags.FLAGS(sys.argv)
  finally:
    sys.argv = saved
  try:
    return COMMANDS[command]()
  finally:
    flags.FLAGS.unparse_flags()


TINY = ["--config.data.image_size=16", "--config.model.hidden_size=32", "--config.model.depth=1",
        "--config.model.num_heads=2", "--config.model.dtype=float32", "--config.train.steps=4",
        "--config.train.batch_size=8", "--config.train.warmup_steps=1", "--config.train.log_every=2",
        "--config.train.ckpt_every=4", "--config.sample.steps=2", "--config.sample.method=euler",
        "--config.eval.num_samples=32", "--config.eval.batch_size=16",
        "--config.eval.classifier_steps=50"]   # as tiny_config: the tests check that evaluation runs


def test_flat_folder_train_sample_eval(tmp_path, capsys):
  """The README's one command on a flat folder (tiny sizes): train with the final evaluation, then
  `adaflow sample` and `adaflow eval`; the FD is the exemplar network's and there is no class accuracy."""
  write_images(tmp_path / "photos", 24)
  w = tmp_path / "runs" / "photos"
  common = [f"--config={FOLDER_CONFIG}", f"--config.data.data_dir={tmp_path / 'photos'}", f"--workdir={w}"] + TINY
  run_command("train", *common)
  trained = json.loads((w / "eval.json").read_text())
  assert trained["class_acc"] is None and trained["cfg_scale"] == 1.0 and trained["num"] == 32
  assert np.isfinite(trained["fd"]) and trained["fd_low"] <= trained["fd"] <= trained["fd_high"]
  assert (w / "samples" / "step_0000004.png").exists()
  cache = os.listdir(tmp_path / "runs" / ".adaflow_cache")
  assert any(n.startswith("eval_instances_folder_") for n in cache) and not any("classifier" in n for n in cache)
  run_command("sample", *common, "--num=6", f"--out={tmp_path / 's.png'}")
  assert Image.open(tmp_path / "s.png").size[0] > 0
  capsys.readouterr()
  run_command("eval", *common)
  out = capsys.readouterr().out
  evaluated = json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out[out.index("{"):])
  assert evaluated["class_acc"] is None
  np.testing.assert_allclose(evaluated["fd"], trained["fd"], rtol=1e-6)   # same samples, cached network


def test_one_class_folder_end_to_end(tmp_path):
  """A folder with one class subfolder trained and evaluated without error (it used to end with
  "num_classes must be at least 2" after training)."""
  from adaflow.train.loop import load_trainer_and_params, train
  write_images(tmp_path / "data" / "only_class", 16, seed=1)
  c = tiny_config(**{"data.name": "folder", "data.data_dir": str(tmp_path / "data"), "data.channels": 3,
                     "sample.cfg_scale": 1.0, "eval.at_end": True, "eval.num_samples": 16,
                     "train.final_samples": True})
  train(c, str(tmp_path / "w"), log=lambda m: None)
  result = json.loads((tmp_path / "w" / "eval.json").read_text())
  assert result["class_acc"] is None and np.isfinite(result["fd"])
  tr, params, _ = load_trainer_and_params(str(tmp_path / "w"))
  assert tr.info.num_classes == 0 and params["params"]["y_embed"].shape == (1, 32)   # the null row only
  gen = tr.generator()
  with pytest.raises(ValueError, match="unconditional.*--cfg 1"):
    generate_images(gen, params, tr.mesh, jax.random.PRNGKey(0), np.zeros(2, np.int32), steps=2,
                    method="euler", cfg_scale=2.0)


def test_unconditional_run_on_two_processes(tmp_path):
  """A flat folder trained by 2 JAX processes (2 CPU devices each) gives the losses of 1 process
  with 4 devices."""
  from test_multiprocess import run_processes, two_process_specs
  write_images(tmp_path / "photos", 24)
  over = {"data.name": "folder", "data.data_dir": str(tmp_path / "photos"), "data.channels": 3,
          "sample.cfg_scale": 1.0, "train.steps": 4, "train.ckpt_every": 4, "train.batch_size": 8}
  (p0, _), (p1, _) = run_processes(two_process_specs(tmp_path / "multi", over))
  (single, _), = run_processes([{"devices": 4, "runs": [{"workdir": str(tmp_path / "single"), "overrides": over}]}])
  assert p0["process_count"] == 2 and p0["runs"][0]["steps"] == [1, 2, 3, 4]
  np.testing.assert_allclose(p0["runs"][0]["losses"], single["runs"][0]["losses"], rtol=1e-5)
  assert p0["runs"][0]["param_sum"] == p1["runs"][0]["param_sum"]
  meta = json.loads((tmp_path / "multi" / "config.json").read_text())
  assert meta["data"]["data_dir"] == str(tmp_path / "photos")


def test_conditional_workdir_from_before_restores_and_samples(tmp_path):
  """tests/fixtures/conditional_v1 was written by the code before #27 (tests/fixtures/
  make_conditional_v1.py): it restores with the same parameter layout and gives the same samples."""
  from adaflow.train.loop import load_trainer_and_params
  w = shutil.copytree(FIXTURE, tmp_path / "w")
  fixture = json.loads((w / "fixture.json").read_text())
  tr, params, step = load_trainer_and_params(str(w))
  assert step == 2 and tr.info.num_classes == 10
  shapes = {jax.tree_util.keystr(p): list(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}
  assert shapes == fixture["param_shapes"]
  s = fixture["sample"]
  imgs = generate_images(tr.generator(), params, tr.mesh, jax.random.PRNGKey(0), np.asarray(s["labels"], np.int32),
                         steps=s["steps"], method=s["method"], cfg_scale=s["cfg_scale"])
  np.testing.assert_allclose(imgs, np.load(w / "expected_samples.npy"), atol=1e-5)


def test_imagenet64_unconditional_smoke(tmp_path):
  """experiments/imagenet64 `uncond_smoke`: train on TFDS mock `downsampled_imagenet/64x64` (no label
  feature), then `adaflow eval fid` (random Inception, reference statistics of the mock data)."""
  pytest.importorskip("tensorflow_datasets")
  from adaflow.train.loop import load_trainer_and_params
  from experiments.imagenet64 import smoke  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "in64u")
  result = smoke.run_smoke(workdir, num=8, shard=4, method="uncond_smoke")
  assert result["num"] == 8 and np.isfinite(result["fid"]) and result["cfg_scale"] == 1.0
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=16):
    tr, params, step = load_trainer_and_params(workdir)
  assert step == 2 and tr.info.num_classes == 0 and params["params"]["y_embed"].shape[0] == 1


@pytest.mark.slow
def test_every_method_trains_and_samples_unconditionally(tmp_path):
  """Data without labels, 2 steps per stage, then samples: the compose recipe with every cell
  (dense -> PPFlow -> DiffCR routing -> train-then-prune pruning and fine-tuning -> step policy with
  the label-free 'features' reward), the train-then-prune driver, DQ-VAE -> DQ-Transformer."""
  from adaflow.compose.sampler import ComposedSampler
  from adaflow.config_defaults import (compose_defaults, grouped_defaults, routing_defaults,
                                       selector_defaults)
  from adaflow.pipelines import recipe
  from adaflow.pipelines.grouped import load_grouped, run_grouped
  from adaflow.train.loop import load_trainer_and_params, train
  base = {"data.use_labels": False, "sample.cfg_scale": 1.0, "eval.cache_dir": str(tmp_path / "cache")}
  c = tiny_config(**base)
  c.model.patch_size = 2
  c.routing = routing_defaults()
  c.routing.bins, c.routing.num_regions = (1.0, 0.5, 0.25), 2
  c.selector = selector_defaults()
  c.selector.step_set, c.selector.quality, c.selector.hidden, c.selector.depth = (2, 4), "features", 8, 1
  c.compose = compose_defaults()
  c.compose.ppflow = c.compose.routing = c.compose.grouped = c.compose.selector = True
  c.compose.stages = ((0.5, (4, 4)), (1.0, (2, 2)))
  for f in ("dense_steps", "ppflow_steps", "routing_steps", "grouped_steps", "selector_steps"):
    c.compose[f] = 2
  c.compose.selector_batch = 4
  c.grouped = grouped_defaults()
  c.grouped.num_groups, c.grouped.rounds, c.grouped.proposals_per_round = 2, 1, 1
  c.grouped.proxy_samples, c.grouped.importance_batches, c.grouped.mlp_granularity = 8, 1, 16
  recipe.run_recipe(c, str(tmp_path / "composed"))
  cfg, info, params, policy = recipe.load_composed(str(tmp_path / "composed"))
  assert info.num_classes == 0
  out = ComposedSampler(cfg, info, params, policy).sample(jax.random.PRNGKey(0), np.zeros(3, np.int32), batch_size=8)
  assert out["images"].shape == (3, 16, 16, 1) and np.all(np.isfinite(out["images"]))

  g = tiny_config(**base)
  g.grouped = grouped_defaults()
  g.grouped.num_groups, g.grouped.stage1_steps, g.grouped.stage2_steps = 2, 2, 2
  g.grouped.rounds, g.grouped.proposals_per_round, g.grouped.proxy_samples = 1, 1, 8
  g.grouped.importance_batches, g.grouped.mlp_granularity = 1, 32
  run_grouped(g, str(tmp_path / "grouped"), log=lambda m: None)
  gen, gparams, _ = load_grouped(str(tmp_path / "grouped"))
  assert np.all(np.isfinite(gen.generate(gparams, jax.random.PRNGKey(0), jax.numpy.zeros(2, jax.numpy.int32),
                                         steps=2, method="euler")))

  v = tiny_config(**base)
  v.objective, v.train.ema_decay, v.train.steps = "dqvae", 0.0, 2
  v.dqvae.coarse_stride, v.dqvae.width, v.dqvae.embed_dim, v.dqvae.codebook_size = 4, 16, 8, 16
  train(v, str(tmp_path / "dqvae"), log=lambda m: None)
  t = tiny_config(**base)
  t.objective, t.tokenizer_workdir, t.train.steps = "dq_transformer", str(tmp_path / "dqvae"), 2
  t.dq_transformer.width, t.dq_transformer.depth_pos, t.dq_transformer.depth_content = 32, 1, 1
  train(t, str(tmp_path / "dqt"), log=lambda m: None)
  tr, tparams, _ = load_trainer_and_params(str(tmp_path / "dqt"))
  imgs = tr.objective.generate(tparams, jax.random.PRNGKey(0), jax.numpy.zeros(2, jax.numpy.int32))
  assert tr.info.num_classes == 0 and imgs.shape == (2, 16, 16, 1)
