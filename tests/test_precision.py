"""model.dtype="auto": bf16 only where the backend multiplies bf16 natively (adaflow/parallel/precision.py)."""
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from adaflow.parallel import precision


@pytest.mark.parametrize("flags,want", [
    (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bfloat16"),
    (frozenset({"avx2", "amx_bf16", "amx_tile"}), "bfloat16"),
    (frozenset({"avx2", "fma"}), "float32"),          # the AVX2-only machine of issue 18
    (frozenset(), "float32"),                         # flags unreadable: the safe choice
])
def test_auto_on_cpu_follows_native_bf16_flags(flags, want):
  name, reason = precision.resolve_compute_dtype("auto", platform="cpu", flags=flags)
  assert name == want
  assert reason.startswith("auto: cpu")


def test_auto_on_tpu_is_bf16_and_explicit_values_win():
  assert precision.resolve_compute_dtype("auto", platform="tpu")[0] == "bfloat16"
  for name in ("float32", "bfloat16", "float16"):
    assert precision.resolve_compute_dtype(name, platform="cpu", flags=frozenset()) == (
        name, "set explicitly in model.dtype")
  with pytest.raises(ValueError, match=r"model\.dtype"):
    precision.resolve_compute_dtype("fp8", platform="cpu", flags=frozenset())


def test_cpu_flags_parsed_from_cpuinfo(tmp_path):
  p = tmp_path / "cpuinfo"
  p.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
  assert precision.cpu_flags(str(p)) == frozenset({"fpu", "sse", "avx2", "avx512_bf16"})
  assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("flags,want", [(frozenset({"avx512_bf16"}), jnp.bfloat16), (frozenset({"avx2"}), jnp.float32)])
def test_dit_from_config_resolves_auto(monkeypatch, flags, want):
  from adaflow.models.dit import dit_from_config
  monkeypatch.setattr(precision, "cpu_flags", lambda *a, **k: flags)
  c = tiny_config(**{"model.dtype": "auto"})
  model = dit_from_config(c.model, (16, 16, 1), 10)
  assert model.dtype == want
  assert "auto" in precision.describe_compute_dtype(c.model)


def test_auto_is_the_default_and_validates():
  from adaflow import config as config_lib
  from adaflow.config_defaults import base_config
  assert base_config().model.dtype == "auto"
  info = type("Info", (), {"image_shape": (16, 16, 1)})()
  config_lib.validate_model(tiny_config(**{"model.dtype": "auto"}), info)
  with pytest.raises(ValueError, match=r"model\.dtype"):
    config_lib.validate_model(tiny_config(**{"model.dtype": "fp8"}), info)


AVX2 = frozenset({"avx2", "fma"})


def test_xla_cpu_defaults_only_without_native_bf16_and_never_over_the_users_setting():
  off = precision.NO_NATIVE_BF16_XLA_FLAGS
  # An AVX2-only CPU on the measured jaxlib: the setting is added after the user's other flags.
  assert precision.xla_cpu_defaults("", AVX2, "0.10.2")[0] == off
  flags, reason = precision.xla_cpu_defaults("--xla_force_host_platform_device_count=2", AVX2, "0.10.2")
  assert flags == f"--xla_force_host_platform_device_count=2 {off}" and "YNNPACK" in reason
  # The user's own YNNPACK setting wins, whatever the CPU.
  mine = f"{precision.YNNPACK_FLAG}=dot"
  assert precision.xla_cpu_defaults(mine, AVX2, "0.10.2") == (mine, "YNNPACK fusions as set in XLA_FLAGS")
  # Native bf16 CPUs and other jaxlib releases (the flag is experimental; XLA aborts on an unknown
  # flag) keep XLA's defaults.
  assert precision.xla_cpu_defaults("", frozenset({"avx2", "avx512_bf16"}), "0.10.2")[0] == ""
  assert precision.xla_cpu_defaults("", frozenset({"amx_bf16"}), "0.10.2")[0] == ""
  assert precision.xla_cpu_defaults("", frozenset({"fp", "asimd", "bf16"}), "0.10.2")[0] == ""    # ARM
  assert precision.xla_cpu_defaults("", frozenset(), "0.10.2")[0] == ""                           # unreadable
  flags, reason = precision.xla_cpu_defaults("", AVX2, "0.11.0")
  assert flags == "" and "jaxlib 0.11.0" in reason
  # Hosts of TPUs / GPUs keep XLA's defaults (their runtime may read XLA_FLAGS), unless told to run on CPU.
  assert precision.xla_cpu_defaults("", AVX2, "0.10.2", accelerator="libtpu")[0] == ""
  assert precision.xla_cpu_defaults("", AVX2, "0.10.2", jax_platforms="tpu,cpu")[0] == ""
  assert precision.xla_cpu_defaults("", AVX2, "0.10.2", jax_platforms="cpu", accelerator="jax_plugins")[0] == off


def test_apply_xla_cpu_defaults_sets_the_environment_once(monkeypatch):
  monkeypatch.setattr(precision, "cpu_flags", lambda *a, **k: AVX2)
  monkeypatch.setattr(precision.jaxlib.version, "__version__", "0.10.2")
  monkeypatch.setattr(precision, "accelerator_plugin", lambda: "")
  env = {}
  precision.apply_xla_cpu_defaults(env)
  assert env == {"XLA_FLAGS": precision.NO_NATIVE_BF16_XLA_FLAGS}
  precision.apply_xla_cpu_defaults(env)           # idempotent: the setting is now the environment's
  assert env == {"XLA_FLAGS": precision.NO_NATIVE_BF16_XLA_FLAGS}
  assert "adaflow's default" in precision.describe_xla_cpu(env["XLA_FLAGS"])
  monkeypatch.setattr(precision, "cpu_flags", lambda *a, **k: frozenset({"avx512_bf16"}))
  env = {}
  precision.apply_xla_cpu_defaults(env)
  assert env == {}
  assert precision.describe_xla_cpu("") == "XLA's default fusions"
