"""Shared test helpers: tiny configs and a fake dataset info."""
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def pytest_configure(config):
  """Three settings for the whole test session, made before JAX is imported anywhere and inherited by
  the xdist workers and every CLI / multi-process subprocess they start:

  - In the default run (`-m "not slow"`, pytest.ini's), `JAX_DISABLE_MOST_OPTIMIZATIONS=1` (JAX's
    own switch: LLVM code generation at -O0, its expensive passes off). Those tests' programs are
    tiny and each is compiled, then run a few times, so most of their CPU time is XLA's LLVM back
    end; the HLO they check (fusion, sharding, layouts, memory and FLOP analyses) is the same as with
    optimizations on. The same programs run slower, and float32 results can differ in the last bits
    from an optimized build (e.g. where LLVM would fuse a multiply and an add): the tests that
    compare with stored images (tests/fixtures' old workdirs, atol 1e-6 / 1e-5) pass on both, and
    every other comparison is between two runs of this session. Slow
    tests (long training, benchmarks) run more than they compile and keep the optimized build. A
    value the caller set is kept (`=0` runs the default tests on the optimized build).
  - One persistent JAX compilation cache: the suite compiles the same small programs (the tiny
    DiT's step, its sampler, the classifier) over and over in fresh processes. A cache the caller set
    is kept; `JAX_COMPILATION_CACHE_DIR=` (empty) turns it off. Executables read back are the ones
    XLA compiled, so no number changes.
  - adaflow's XLA:CPU settings for this machine (`precision.apply_xla_cpu_defaults`, what the CLI
    applies): in-process tests compute as `adaflow` commands do."""
  if "not slow" in (config.getoption("markexpr") or ""):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    path = tempfile.mkdtemp(prefix="adaflow-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    config.adaflow_jax_cache = path       # removed by the process that made it
  # Last: importing jax reads the two settings above (it starts no backend, so XLA_FLAGS still count).
  from adaflow.parallel.precision import apply_xla_cpu_defaults
  apply_xla_cpu_defaults()


def pytest_unconfigure(config):
  path = getattr(config, "adaflow_jax_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)


def tiny_config(**overrides):
  """A DiT small enough to compile and train in seconds on CPU (digits 16x16)."""
  from adaflow.config_defaults import base_config
  c = base_config()
  c.name = "test"
  c.data.name = "digits"
  c.data.image_size = 16
  c.model.patch_size = 4
  c.model.hidden_size = 32
  c.model.depth = 2
  c.model.num_heads = 2
  c.model.dtype = "float32"
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.lr = 1e-3
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.ckpt_every = 2
  c.train.final_samples = False
  c.sample.steps = 2
  c.sample.method = "euler"
  c.mesh.data = -1
  # The FD's feature network: 50 Adam steps instead of 300 (the tests check that evaluation runs and
  # agrees across processes, devices and resumes, not how good the network is); ~5x less CPU per test.
  c.eval.classifier_steps = 50
  return set_fields(c, overrides)


def set_fields(c, fields):
  """Sets dotted config fields, e.g. {"train.steps": 8}; returns `c`."""
  for k, v in fields.items():
    node = c
    parts = k.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


def tiny_dqvae_config(**dqvae_fields):
  """A DQ-VAE tokenizer of `tiny_config`'s digits 16x16 (4x4 coarse regions), fields of `dqvae` set
  from the keywords."""
  from adaflow.config_defaults import dqvae_defaults
  c = tiny_config()
  c.objective = "dqvae"
  c.data.channels = 1
  c.dqvae = dqvae_defaults()
  c.dqvae.coarse_stride = 4
  c.dqvae.width = 16
  c.dqvae.embed_dim = 8
  c.dqvae.codebook_size = 16
  c.train.ema_decay = 0.0
  for k, v in dqvae_fields.items():
    c.dqvae[k] = v
  return c


def tiny_selector_config(generator_workdir="/nonexistent", **overrides):
  """An AdaDiff step policy over the `tiny_config` generator in `generator_workdir` (steps 1 or 2)."""
  from adaflow.config_defaults import selector_defaults
  c = tiny_config(**overrides)
  c.objective = "step_selector"
  c.selector = selector_defaults()
  c.selector.generator_workdir = generator_workdir
  c.selector.step_set = (1, 2)
  c.selector.quality = "closeness"
  c.train.ema_decay = 0.0
  return c


@pytest.fixture
def tiny():
  return tiny_config
