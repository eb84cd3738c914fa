"""Compute dtype and attention core that fit the hardware: `model.dtype="auto"` and
`model.attention="auto"` resolve here, once, to a dtype name and an attention implementation.

bfloat16 matmul inputs pay off only where the backend multiplies bf16 natively: TPUs, GPUs with
bf16 tensor cores (compute capability >= 8.0) and CPUs with AVX512_BF16 or AMX-BF16. Elsewhere
XLA emulates bf16 GEMMs by converting to fp32 (measured on a 2-core AVX2 CPU: a 2048^3 matmul runs
at 82 GFLOP/s in bf16 vs 138 in fp32), so float32 is both faster and exact there.

The same machines get one XLA:CPU setting before the backend starts (`apply_xla_cpu_defaults`):
XLA hands every dot and reduction to YNNPACK by default, whose float32 kernels ran slower there than
XLA's own (experiments/results/xla_cpu_end_to_end.md).
"""
from __future__ import annotations

import importlib.util
import os
from typing import MutableMapping, Optional

import jax
import jaxlib.version

DTYPE_NAMES = ("bfloat16", "float32", "float16")
ATTENTION_IMPLS = ("einsum", "dot_product_attention")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
YNNPACK_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Removes two fusion types from XLA's default list ('-' form): convolutions (the DQ-VAE's) stay as XLA
# picks them. XLA aborts on a flag it does not know and this one is experimental, so it is set only
# on the jaxlib release it was measured with.
NO_NATIVE_BF16_XLA_FLAGS = f"{YNNPACK_FLAG}=-individual_dot,-reduce"
XLA_CPU_DEFAULTS_JAXLIB = (0, 10)


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset[str]:
  """The CPU feature flags of the first core listed in `cpuinfo_path` (empty where unreadable,
  e.g. macOS: then "auto" picks float32, the safe choice)."""
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


def accelerator_plugin() -> str:
  """The JAX accelerator runtime installed here ("libtpu" or "jax_plugins": CUDA / ROCm), or ""."""
  return next((name for name in ("libtpu", "jax_plugins") if importlib.util.find_spec(name)), "")


def xla_cpu_defaults(xla_flags: str, flags: frozenset[str], jaxlib_version: str, jax_platforms: str = "",
                     accelerator: str = "") -> tuple[str, str]:
  """(the user's `xla_flags`, CPU feature `flags`, jaxlib version, $JAX_PLATFORMS, `accelerator_plugin()`)
  -> (XLA_FLAGS to start with, reason). A YNNPACK setting already in `xla_flags` wins; adaflow adds
  its own only where JAX computes on the CPU (JAX_PLATFORMS=cpu, or no accelerator runtime installed:
  an accelerator's runtime may parse XLA_FLAGS with another XLA), on x86 CPUs with AVX2 and without
  native bf16 matmuls (the machines where it was measured; not ARM or unreadable flags) and on
  jaxlib 0.10.x."""
  if YNNPACK_FLAG in xla_flags:
    return xla_flags, "YNNPACK fusions as set in XLA_FLAGS"
  if jax_platforms != "cpu" and (jax_platforms or accelerator):
    return xla_flags, f"XLA's default fusions (accelerator host: {jax_platforms or accelerator})"
  native = sorted(set(NATIVE_BF16_CPU_FLAGS) & set(flags))
  if native:
    return xla_flags, f"XLA's default fusions (native bf16 matmuls: {', '.join(native)})"
  if "avx2" not in flags:
    return xla_flags, "XLA's default fusions (not an AVX2 x86 CPU, where adaflow's setting was measured)"
  if tuple(int(v) for v in jaxlib_version.split(".")[:2]) != XLA_CPU_DEFAULTS_JAXLIB:
    return xla_flags, (f"XLA's default fusions (jaxlib {jaxlib_version}: adaflow's YNNPACK setting is for "
                       f"{'.'.join(map(str, XLA_CPU_DEFAULTS_JAXLIB))}.x)")
  return (f"{xla_flags} {NO_NATIVE_BF16_XLA_FLAGS}".strip(),
          f"YNNPACK's dot and reduce fusions off: XLA's own float32 kernels are faster on AVX2 CPUs without "
          f"native bf16; set {YNNPACK_FLAG}=... in XLA_FLAGS to choose")


def apply_xla_cpu_defaults(environ: Optional[MutableMapping[str, str]] = None) -> str:
  """Adds adaflow's XLA:CPU settings for this machine to `environ["XLA_FLAGS"]` (default
  `os.environ`) and returns why. XLA reads its flags once, when the first backend starts, so entry
  points (the CLI, the tests, the benchmarks that time adaflow) call this before any JAX work; a
  script using adaflow as a library calls it at its top."""
  environ = os.environ if environ is None else environ
  xla_flags, reason = xla_cpu_defaults(environ.get("XLA_FLAGS", ""), cpu_flags(), jaxlib.version.__version__,
                                       environ.get("JAX_PLATFORMS", ""), accelerator_plugin())
  if xla_flags:
    environ["XLA_FLAGS"] = xla_flags
  return reason


def describe_xla_cpu(xla_flags: str) -> str:
  """What the YNNPACK setting in `xla_flags` (this process's XLA_FLAGS) is, for the start-up line."""
  if NO_NATIVE_BF16_XLA_FLAGS in xla_flags:
    return "YNNPACK's dot and reduce fusions off (adaflow's default on AVX2 CPUs without native bf16)"
  if YNNPACK_FLAG in xla_flags:
    return "YNNPACK fusions as set in XLA_FLAGS"
  return "XLA's default fusions"


def describe_xla_backend() -> str:
  """"; XLA:CPU <its YNNPACK setting>" on the CPU backend, "" elsewhere: the tail of the start-up
  line that names the compute dtype."""
  if jax.default_backend() != "cpu":
    return ""
  return f"; XLA:CPU {describe_xla_cpu(os.environ.get('XLA_FLAGS', ''))}"


def _gpu_has_bf16() -> tuple[bool, str]:
  cc = getattr(jax.devices()[0], "compute_capability", None)
  try:
    major = int(str(cc).split(".")[0])
  except ValueError:
    return True, f"GPU {jax.devices()[0].device_kind} (compute capability unknown; assuming bf16 tensor cores)"
  return major >= 8, f"GPU {jax.devices()[0].device_kind}, compute capability {cc}"


def resolve_compute_dtype(name: str, platform: Optional[str] = None,
                          flags: Optional[frozenset[str]] = None, field: str = "model.dtype") -> tuple[str, str]:
  """`model.dtype` (or the config `field` named) -> (dtype name, reason). Explicit names are
  returned as given; "auto" picks bfloat16 on TPU, bf16-capable GPUs and CPUs with a native bf16
  matmul flag, else float32.

  `platform` (default `jax.default_backend()`) and `flags` (default: /proc/cpuinfo) are arguments
  so that tests can stand in for other machines.
  """
  if name in DTYPE_NAMES:
    return name, f"set explicitly in {field}"
  if name != "auto":
    raise ValueError(f"{field} must be 'auto' or one of {list(DTYPE_NAMES)}, got {name!r}")
  platform = platform or jax.default_backend()
  if platform == "tpu":
    return "bfloat16", "auto: TPU (native bf16 matmul units)"
  if platform in ("gpu", "cuda", "rocm"):
    ok, what = _gpu_has_bf16()
    return ("bfloat16" if ok else "float32"), f"auto: {what}"
  flags = cpu_flags() if flags is None else flags
  native = sorted(set(NATIVE_BF16_CPU_FLAGS) & set(flags))
  if native:
    return "bfloat16", f"auto: {platform} with native bf16 matmuls ({', '.join(native)})"
  return "float32", (f"auto: {platform} without native bf16 matmuls (no {' / '.join(NATIVE_BF16_CPU_FLAGS)} "
                     f"flag), where bf16 GEMMs are emulated and slower than float32")


def resolve_attention(name: str, platform: Optional[str] = None) -> tuple[str, str]:
  """`model.attention` -> (one of ATTENTION_IMPLS, reason). Explicit names are returned as given;
  "auto" picks `jax.nn.dot_product_attention` on GPUs (cuDNN's fused attention where it applies)
  and the einsum path elsewhere: on XLA:CPU the einsum attention block is 1.5-1.6x faster forward
  and 1.3x faster forward+backward (experiments/results/attention.md); on TPU both lower to XLA
  einsums, and the einsum path keeps the float32-accumulating matmuls of `layers.matmul`."""
  if name in ATTENTION_IMPLS:
    return name, "set explicitly in model.attention"
  if name != "auto":
    raise ValueError(f"model.attention must be 'auto' or one of {list(ATTENTION_IMPLS)}, got {name!r}")
  platform = platform or jax.default_backend()
  if platform in ("gpu", "cuda", "rocm"):
    return "dot_product_attention", "auto: GPU (cuDNN fused attention where it applies)"
  return "einsum", (f"auto: {platform} (XLA:CPU runs the einsum path faster; no fused kernel here)"
                    if platform == "cpu" else f"auto: {platform} (XLA einsums either way)")


def describe_compute_dtype(model_config) -> str:
  """One start-up log line: the compute dtype `model_config.dtype` and the attention core
  `model_config.attention` resolve to, and why (and on CPU, the YNNPACK setting XLA started with)."""
  name, reason = resolve_compute_dtype(model_config.dtype)
  impl, why = resolve_attention(model_config.attention)
  return f"compute dtype {name} ({reason}); attention {impl} ({why}){describe_xla_backend()}"
