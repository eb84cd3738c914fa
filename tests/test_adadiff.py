"""AdaDiff: step-set validation, REINFORCE (bandit convergence, baseline variance), rewards,
deterministic grouped sampling, and the `step_selector` objective through the training loop."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaflow.models import step_selector as sel
from adaflow.rl import reinforce as rl
from adaflow.rl import rewards as rw
from conftest import tiny_config, tiny_selector_config


# ---- step sets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [(), (8,), (8, 4), (4, 4, 8), (0, 4), (-2, 4), (4.5, 8), (True, 4), 7, None])
def test_invalid_step_sets_rejected(bad):
  with pytest.raises(ValueError, match=r"selector\.step_set"):
    sel.validate_step_set(bad)


def test_valid_step_set():
  assert sel.validate_step_set([4, 8, 16, 32, 64]) == (4, 8, 16, 32, 64)
  assert sel.validate_step_set(np.array([1, 3])) == (1, 3)


def test_config_validation_names_fields():
  from adaflow import methods
  c = tiny_selector_config()
  c.selector.step_set = (16, 8)
  with pytest.raises(ValueError, match=r"selector\.step_set"):
    methods.validate(c)
  c = tiny_selector_config(generator_workdir="")
  with pytest.raises(ValueError, match=r"selector\.generator_workdir.*--init"):
    methods.validate(c)
  c = tiny_selector_config()
  c.selector.quality = "psnr"
  with pytest.raises(ValueError, match=r"selector\.quality"):
    methods.validate(c)
  # The reward's classifier must not be the evaluation's (a policy scored by its own reward).
  c = tiny_selector_config()
  c.selector.quality = "classifier"
  methods.validate(c)                                   # defaults: seeds 1 (reward) and 0 (eval)
  c.selector.classifier_seed = c.eval.classifier_seed
  with pytest.raises(ValueError, match=r"selector\.classifier_seed.*eval\.classifier_seed"):
    methods.validate(c)
  c = tiny_selector_config()
  c.selector.lr = 0.0
  with pytest.raises(ValueError, match=r"config\.selector\.lr: must be positive"):
    methods.validate(c)


def test_use_init_workdir_sets_generator():
  from adaflow.methods import uses_init_workdir
  c = tiny_selector_config()
  assert uses_init_workdir(c, "some/gen") is True
  assert c.selector.generator_workdir == os.path.abspath("some/gen")
  c.objective = "flow_matching"
  assert uses_init_workdir(c, "other") is False  # normal --init path unchanged
  assert c.selector.generator_workdir == os.path.abspath("some/gen")


# ---- REINFORCE -----------------------------------------------------------------------------------
def test_policy_gradient_sign():
  """A positive advantage pushes the chosen action's logit up, a negative one pushes it down."""
  logits = jnp.zeros((2, 3))
  actions = jnp.array([1, 2])
  rewards = jnp.array([1.0, -1.0])
  g = jax.grad(lambda l: rl.reinforce_loss(l, actions, rewards, 0.0, 0.0)[0])(logits)
  assert g[0, 1] < 0 and g[1, 2] > 0          # gradient descent raises logit[0,1], lowers logit[1,2]
  # the entropy bonus alone pushes a peaked policy back toward uniform
  peaked = jnp.array([[3.0, 0.0, 0.0]])
  ge = jax.grad(lambda l: rl.reinforce_loss(l, jnp.array([0]), jnp.array([0.0]), 0.0, 1.0)[0])(peaked)
  assert ge[0, 0] > 0


def _bandit(means, noise=0.3):
  means = jnp.asarray(means, jnp.float32)

  def reward_fn(idx, actions, key):
    del idx
    return means[actions] + noise * jax.random.normal(key, actions.shape)
  return reward_fn


def test_bandit_converges_to_best_arm():
  policy = sel.StepPolicy(num_actions=4, hidden=8, depth=1)
  feats = np.ones((16, 3), np.float32)
  params = policy.init(jax.random.PRNGKey(0), jnp.asarray(feats[:1]))
  p0 = jax.nn.softmax(policy.apply(params, jnp.asarray(feats[:1])))[0]
  np.testing.assert_allclose(p0, 0.25, atol=1e-6)            # zero-initialised head: uniform
  params, hist = rl.reinforce_train(policy.apply, params, feats, _bandit([0.1, 0.5, 0.9, 0.3]), steps=200,
                                    batch_size=32, rng=jax.random.PRNGKey(1), lr=3e-2, entropy_coef=0.001)
  probs = jax.nn.softmax(policy.apply(params, jnp.asarray(feats[:1])))[0]
  assert int(jnp.argmax(probs)) == 2 and float(probs[2]) > 0.9, probs
  assert hist[-1]["reward"] > hist[0]["reward"]


def test_baseline_reduces_gradient_variance():
  """Same fixed problem (rewards with a large common offset), same sampled actions: the
  moving-average baseline gives a much smaller gradient variance and the same mean gradient."""
  means = jnp.array([5.0, 5.5, 6.0])
  logits = jnp.zeros((1, 3))
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  actions = jax.vmap(lambda k: jax.random.categorical(k, jnp.zeros((16, 3))))(keys)        # [400, 16]
  rewards = means[actions] + 0.1 * jax.random.normal(jax.random.PRNGKey(1), actions.shape)
  b, baselines = rl.init_baseline(), []
  for r in rewards:                       # the moving average as the training loop runs it
    baselines.append(rl.current_baseline(b, r))
    b = rl.update_baseline(b, r, 0.9)
  baselines = jnp.stack(baselines)

  def grad(a, r, base):
    return jax.grad(lambda l: rl.reinforce_loss(jnp.tile(l, (16, 1)), a, r, base, 0.0)[0])(logits)[0]

  with_b = np.asarray(jax.vmap(grad)(actions, rewards, baselines))[50:]
  without_b = np.asarray(jax.vmap(grad)(actions, rewards, jnp.zeros(400)))[50:]
  var_b, var_0 = with_b.var(axis=0).sum(), without_b.var(axis=0).sum()
  assert var_b < 0.05 * var_0, (var_b, var_0)
  np.testing.assert_allclose(with_b.mean(0), without_b.mean(0), atol=4 * np.sqrt(var_0 / len(with_b)))


def test_baseline_update():
  b = rl.init_baseline()
  r = jnp.array([1.0, 3.0])
  assert float(rl.current_baseline(b, r)) == 2.0             # first batch: its own mean
  b = rl.update_baseline(b, r, 0.9)
  assert float(b["value"]) == 2.0 and float(b["initialized"]) == 1.0
  b = rl.update_baseline(b, jnp.array([12.0]), 0.9)
  np.testing.assert_allclose(float(b["value"]), 0.9 * 2.0 + 0.1 * 12.0, rtol=1e-6)
  assert float(rl.current_baseline(b, jnp.array([100.0]))) == pytest.approx(3.0)


# ---- rewards --------------------------------------------------------------------------------------
def test_reward_pieces():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
  ref = x.at[1].add(0.5)
  np.testing.assert_allclose(rw.closeness(x, ref), [0.0, -0.25, 0.0], atol=1e-6)
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  lp = rw.class_log_prob(logits, jnp.array([0, 2]))
  np.testing.assert_allclose(lp, [2.0 - np.log(np.exp(2) + 1 + np.exp(-1)), -np.log(3)], rtol=1e-6)
  f = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(rw.feature_cosine(f, jnp.array([[2.0, 0.0], [-1.0, 1.0]])), [1.0, 0.0], atol=1e-6)
  r = rw.step_reward(jnp.array([0.5, 0.5]), jnp.array([16, 64]), 64, 0.2)
  np.testing.assert_allclose(r, [0.5 - 0.05, 0.3], rtol=1e-6)
  per_action = jnp.stack([x + 1.0, x])                       # [A=2, B, ...]; reference = last action
  q = rw.all_action_quality(rw.make_quality_fn("closeness"), per_action, jnp.zeros(3, jnp.int32))
  np.testing.assert_allclose(q, [[-1.0, 0.0]] * 3, atol=1e-6)
  with pytest.raises(ValueError, match=r"selector\.quality"):
    rw.make_quality_fn("lpips")
  with pytest.raises(ValueError, match="classifier"):
    rw.make_quality_fn("classifier")


def test_classifier_quality_matches_eval_classifier():
  from adaflow.eval.classifier import ClassifierNet, FeatureClassifier
  net = ClassifierNet(num_classes=10)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  clf = FeatureClassifier(jax.device_get(params), 10, (16, 16, 1))
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 16, 16, 1), minval=-1.2, maxval=1.2)
  y = jnp.arange(5) % 10
  q = rw.make_quality_fn("classifier", clf)(x, x, y)
  ref_logits = net.apply(params, jnp.clip(x, -1, 1))[0]      # what FeatureClassifier.logits computes
  ref = jax.nn.log_softmax(ref_logits)[np.arange(5), np.asarray(y)]
  np.testing.assert_allclose(q, ref, rtol=1e-4, atol=1e-4)
  fq = rw.make_quality_fn("features", clf)(x, x, y)
  np.testing.assert_allclose(fq, 1.0, atol=1e-5)


def test_noise_statistics_standardised():
  z = jax.random.normal(jax.random.PRNGKey(0), (4096, 16, 16, 1))
  s = np.asarray(sel.noise_statistics(z))
  assert s.shape == (4096, 6)
  np.testing.assert_allclose(s.mean(0), 0.0, atol=0.1)
  np.testing.assert_allclose(s.std(0), 1.0, atol=0.1)


# ---- objective ------------------------------------------------------------------------------------
def _tiny_objective(**selector_overrides):
  from adaflow import data as data_lib
  from adaflow.methods import generator_for
  from adaflow.objectives.step_selector import StepSelectorObjective
  gen_config = tiny_config()
  info = data_lib.get_info(gen_config.data)
  gen = generator_for(gen_config, info)
  gen_params = jax.tree_util.tree_map(lambda x: x, __import__("flax").linen.meta.unbox(gen.init(jax.random.PRNGKey(0))))
  c = tiny_selector_config()
  for k, v in selector_overrides.items():
    c.selector[k] = v
  return StepSelectorObjective(c, info, generator=gen, generator_params=gen_params), gen, gen_params


def _mixed_policy(obj, seed=3):
  """Policy params whose argmax differs between classes (random, non-zero output layer)."""
  params = jax.tree_util.tree_map(lambda x: x, obj.init(jax.random.PRNGKey(0)))
  k = params["params"]["logits"]["kernel"]
  params["params"]["logits"]["kernel"] = 3.0 * jax.random.normal(jax.random.PRNGKey(seed), k.shape)
  return params


def test_grouped_sampling_deterministic_and_matches_generator():
  obj, gen, gen_params = _tiny_objective(use_noise_stats=True)
  params = _mixed_policy(obj)
  labels = np.arange(12) % 10
  key = jax.random.PRNGKey(5)
  a = obj.sample_grouped(params, key, labels, batch_size=8)
  b = obj.sample_grouped(params, key, labels, batch_size=8)
  np.testing.assert_array_equal(a["images"], b["images"])
  np.testing.assert_array_equal(a["steps"], b["steps"])
  assert set(a["steps"].tolist()) == {1, 2}, a["steps"]     # both groups are used
  # each input equals the generator's own sample at its chosen step count from the same noise
  for s in obj.step_set:
    ref = np.asarray(gen.generate(gen_params, key, jnp.asarray(labels), steps=s, method=obj.method,
                                  cfg_scale=obj.cfg_scale))
    m = a["steps"] == s
    np.testing.assert_allclose(a["images"][m], ref[m], atol=1e-4)
  # and the jittable `generate` (all counts + select) gives the same images
  full = np.asarray(jax.jit(obj.generate)(params, key, jnp.asarray(labels)))
  np.testing.assert_allclose(full, a["images"], atol=1e-4)
  other = obj.sample_grouped(params, jax.random.PRNGKey(6), labels, batch_size=8)
  assert not np.allclose(other["images"], a["images"])


def test_objective_loss_gradient_and_baseline():
  obj, _, _ = _tiny_objective()
  params = obj.init(jax.random.PRNGKey(0))
  batch = {"image": jnp.zeros((8, 16, 16, 1)), "label": jnp.arange(8) % 10}
  (loss, (metrics, side)), grads = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(params, batch,
                                                                                      jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  assert obj.has_side
  assert float(side["initialized"]) == 1.0
  np.testing.assert_allclose(float(side["value"]), float(metrics["reward"]), rtol=1e-5)
  assert float(metrics["frac_1"]) + float(metrics["frac_2"]) == pytest.approx(1.0)
  assert float(metrics["max_step_quality"]) == pytest.approx(0.0, abs=1e-7)   # closeness of the reference
  g_policy = sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree_util.tree_leaves(grads["params"]))
  assert g_policy > 0
  assert all(float(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(grads["reinforce"]))
  assert float(obj.after_update(params, side)["reinforce"]["value"]) == float(side["value"])


@pytest.mark.slow
def test_train_loop_with_init_checkpoint_and_resume(tmp_path):
  """Generator via the normal loop, then the selector through `train` (policy only), then resume."""
  from adaflow.train.loop import train
  from adaflow.train.loop import load_trainer_and_params
  gen_dir = str(tmp_path / "gen")
  train(tiny_config(**{"train.steps": 2}), gen_dir, log=lambda m: None)
  c = tiny_selector_config(generator_workdir=gen_dir, **{"train.steps": 2})
  sel_dir = str(tmp_path / "sel")
  s2 = train(c, sel_dir, log=lambda m: None)
  assert set(s2.params) == {"params", "reinforce"}
  c4 = tiny_selector_config(generator_workdir=gen_dir, **{"train.steps": 4})
  s4 = train(c4, sel_dir, log=lambda m: None)                   # resumes from step 2
  assert int(s4.step) == 4 and float(s4.params["reinforce"]["initialized"]) == 1.0
  tr, params, step = load_trainer_and_params(sel_dir)
  assert step == 4
  out = tr.objective.sample_grouped(params, jax.random.PRNGKey(0), np.arange(4))
  assert out["images"].shape == (4, 16, 16, 1)


# ---- (solver, steps) actions and a compute cost in network evaluations (issue #25) ------------
@pytest.mark.parametrize("bad", [("euler:4",), ("rk4:4", "euler:2"), ("euler:0", "ab2:2"), ("euler:4", "euler:4"),
                                 ("euler4", "ab2:8")])
def test_invalid_actions_rejected(bad):
  with pytest.raises(ValueError, match=r"selector\.actions"):
    sel.parse_actions(bad, (4, 8), "heun")


def test_actions_default_to_the_step_set_with_one_solver():
  from adaflow import methods
  assert sel.parse_actions((), (4, 8), "heun") == (("heun", 4), ("heun", 8))
  assert sel.parse_actions(("euler:2", "ab2:8", "heun:4"), (4, 8), "heun") == (("euler", 2), ("ab2", 8), ("heun", 4))
  c = tiny_selector_config()
  c.selector.actions = ("euler:2", "sde:4")
  with pytest.raises(ValueError, match=r"selector\.actions"):
    methods.validate(c)
  c = tiny_selector_config()
  c.selector.cost = "seconds"
  with pytest.raises(ValueError, match=r"selector\.cost"):
    methods.validate(c)


def test_solver_actions_sample_like_the_generator_and_cost_network_evaluations():
  obj, gen, gen_params = _tiny_objective(actions=("euler:1", "heun:2", "ab2:3"), cost="nfe", use_noise_stats=True)
  assert obj.costs == (1.0, 4.0, 3.0) and obj.reference == 1          # heun: 2 evaluations per step
  assert _tiny_objective(actions=("euler:1", "heun:2"), cost="flops")[0].costs[1] == pytest.approx(
      4 * obj.action_costs("flops")[0])
  params = _mixed_policy(obj)
  labels = np.arange(12) % 10
  key = jax.random.PRNGKey(5)
  res = obj.sample_grouped(params, key, labels, batch_size=8)
  assert len(set(res["actions"].tolist())) >= 2
  for a, (method, steps) in enumerate(obj.actions):
    ref = np.asarray(gen.generate(gen_params, key, jnp.asarray(labels), steps=steps, method=method,
                                  cfg_scale=obj.cfg_scale))
    m = res["actions"] == a
    np.testing.assert_allclose(res["images"][m], ref[m], atol=1e-4)
  batch = {"image": jnp.zeros((8, 16, 16, 1)), "label": jnp.arange(8) % 10}
  loss, (metrics, _) = jax.jit(obj.loss)(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  fracs = [float(metrics[f"frac_{m}{n}"]) for m, n in obj.actions]
  assert sum(fracs) == pytest.approx(1.0)
  assert 1.0 <= float(metrics["avg_cost"]) <= 4.0
