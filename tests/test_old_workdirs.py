"""Workdirs written before the method table (issue #26: every DiT-family method became a preset of
the composed objective) restore, train on and sample unchanged.

tests/fixtures/workdirs_2026_12_02/<objective>/ were written by commit 31e7365 (the last one with a
separate objective class per method) with `train()` on tiny_config for 2 steps, plus
expected_samples.npz: the images its sampler made for PRNGKey(5), labels 0..3, Heun 3 steps, CFG 1.5.
"""
import os
import shutil

import jax
import numpy as np
import pytest

from adaflow.compose.objective import ComposedObjective
from adaflow.flow.driver import generate_images
from adaflow.train.loop import config_of, load_trainer_and_params, train

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "workdirs_2026_12_02")


# The ppflow fixture's tiny model has 8x8 stage patches wider than its width: the loss-floor warning is expected.
@pytest.mark.filterwarnings("ignore:model.stages. stage 0's 8x8 patches:UserWarning")
@pytest.mark.parametrize("objective", ["flow_matching", "ppflow", "routed_flow_matching"])
def test_a_workdir_written_before_the_method_table_restores_and_samples_the_same_images(objective, tmp_path):
  wd = str(tmp_path / objective)
  shutil.copytree(os.path.join(FIXTURES, objective), wd)
  tr, params, step = load_trainer_and_params(wd)
  assert step == 2 and tr.config.objective == objective and isinstance(tr.objective, ComposedObjective)
  want = np.load(os.path.join(wd, "expected_samples.npz"), allow_pickle=False)
  got = generate_images(tr.generator(), params, tr.mesh, jax.random.PRNGKey(5), want["labels"], steps=3,
                        method="heun", cfg_scale=1.5)
  np.testing.assert_allclose(got, want["images"], rtol=0, atol=1e-6)


def test_an_old_workdir_resumes_training(tmp_path):
  wd = str(tmp_path / "routed")
  shutil.copytree(os.path.join(FIXTURES, "routed_flow_matching"), wd)
  c = config_of(wd)
  c.train.steps = 3
  state = train(c, wd, log=lambda m: None)
  assert int(jax.device_get(state.step)) == 3
