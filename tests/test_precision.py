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
