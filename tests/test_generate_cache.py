"""Samplers are compiled once per (generator, setting, batch bucket) and reused across calls."""
import gc

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adaflow.flow import driver
from adaflow.parallel import make_mesh


class FakeGenerator:
  """Duck-typed generator: images are the labels broadcast, plus noise from rng; records the batch
  sizes it was traced with."""
  num_classes = 10

  def __init__(self):
    self.traced = []

  def generate(self, params, rng, labels, *, steps, method, cfg_scale):
    self.traced.append(labels.shape[0])
    noise = jax.random.normal(rng, (labels.shape[0], 4, 4, 1))
    return params["w"] * labels[:, None, None, None].astype(jnp.float32) + 0 * noise + steps

  def specialize(self, params):
    del params
    return self


class CompileCounter:
  def __init__(self):
    self.count = 0

  def __call__(self, event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def _mesh():
  return make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))


def test_second_call_compiles_nothing_and_small_requests_use_a_small_bucket():
  g, mesh = FakeGenerator(), _mesh()
  params = {"w": jnp.ones(())}
  labels = (np.arange(40) % 10).astype(np.int32)
  kw = dict(steps=3, method="euler", cfg_scale=1.0, batch_size=256)
  with CompileCounter() as first:
    a = driver.generate_images(g, params, mesh, jax.random.PRNGKey(0), labels, **kw)
  assert first.count >= 1
  shards = mesh.shape["data"]
  assert g.traced == [64 if shards <= 64 else shards]       # 40 images run a 64 batch, not 256
  with CompileCounter() as second:
    b = driver.generate_images(g, params, mesh, jax.random.PRNGKey(0), labels, **kw)
  assert second.count == 0 and g.traced == [g.traced[0]]
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[:, 0, 0, 0], labels + 3)
  # Another setting is another program; the first one stays cached.
  with CompileCounter() as third:
    driver.generate_images(g, params, mesh, jax.random.PRNGKey(1), labels, **{**kw, "steps": 5})
  assert third.count >= 1
  with CompileCounter() as fourth:
    driver.generate_images(g, params, mesh, jax.random.PRNGKey(2), labels, **kw)
  assert fourth.count == 0


def test_buckets_and_cache_does_not_keep_the_generator_alive():
  assert driver.batch_buckets(256, 1) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
  assert driver.batch_buckets(250, 2) == [2, 4, 8, 16, 32, 64, 128, 250]
  assert driver.batch_buckets(8, 8) == [8]
  assert driver.batch_buckets(100, 1, smallest=8) == [8, 16, 32, 64, 100]   # the step policy's groups
  assert driver.batch_buckets(100, 4, smallest=6) == [8, 16, 32, 64, 100]
  g, mesh = FakeGenerator(), _mesh()
  driver.generate_images(g, {"w": jnp.ones(())}, mesh, jax.random.PRNGKey(0), np.zeros(3, np.int32),
                           steps=1, method="euler", cfg_scale=1.0)
  ref = __import__("weakref").ref(g)
  del g
  gc.collect()
  assert ref() is None
  other = FakeGenerator()                 # a new generator is never served another one's program
  driver.generate_images(other, {"w": jnp.ones(())}, mesh, jax.random.PRNGKey(0), np.zeros(3, np.int32),
                           steps=1, method="euler", cfg_scale=1.0)
  assert other.traced
