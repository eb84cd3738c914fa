"""adaflow DiT (JAX, jit) vs diffusers DiTTransformer2DModel (PyTorch), side by side in one run.

    flock /tmp/adaflow-bench.lock python -m experiments.bench_vs_torch [--sizes S,B] [--reps 3]
        [--batch 32] [--modes eager,bf16,compile] [--dtype auto[,bfloat16,...]] [--profile]

Same network on both sides: DiT-S/2 and DiT-B/2 on 32x32x3 images (256 tokens), 10 classes,
batch 32, no learned sigma, LayerNorm eps 1e-6. adaflow runs its default `model.dtype="auto"`
(float32 params; bf16 matmul inputs with float32 accumulation where the CPU has native bf16
matmuls, float32 elsewhere; the CPU flags are in the results header), or each `--dtype` setting
given as a comma list (e.g. `auto,bfloat16` on an AVX2-only CPU: whether auto's float32 is the faster
choice, in the same run; ratios divide by the first); torch runs eager float32, eager
under `torch.autocast("cpu", bfloat16)`, and `torch.compile` (float32) when it works.

Measured per contender (timed repetitions interleaved: every repetition times each contender
once, so drifting machine load hits all of them alike; the median is reported):
  * forward images/s  (no gradient; torch under `torch.no_grad()`, eval mode)
  * train-step images/s (MSE loss on a velocity-like target, backward, AdamW update; one fixed
    batch, no data loading)
  * peak memory of the train step. adaflow: XLA's compiled buffer assignment
    (`memory_analysis()`: arguments + outputs - donated aliases + temporaries), i.e. the step's
    whole working set incl. params and optimizer state. torch: resident set size sampled every
    ~1 ms in a separate subprocess (so JAX's memory does not pollute it) during one steady-state
    train step, minus the RSS before the model was built (params + grads + AdamW state +
    activations + allocator caches). Different methods: see the caveat in the results file.

`--profile` captures a jax.profiler trace of the adaflow train step (DiT-S/2) and sums the XLA
op durations by kind (dot fusions, elementwise/loop fusions, reductions, copies/transposes).
Writes experiments/results/vs_torch.md.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import types

import numpy as np

# Not experiments.common.ROOT: that module imports jax, and the torch memory subprocess measures RSS without it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# T: tiny, for a quick smoke run only; Q: the width and depth of configs/quickstart.py and the crops testbed
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "T": (2, 64, 2), "Q": (4, 128, 4)}
IMAGE, CHANNELS, PATCH, CLASSES = 32, 3, 2, 10


# ---------------------------------------------------------------------------------------------
# inputs shared by both frameworks


def make_inputs(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, IMAGE, IMAGE, CHANNELS)).astype(np.float32)        # NHWC
  target = rng.standard_normal((batch, IMAGE, IMAGE, CHANNELS)).astype(np.float32)
  t = rng.uniform(0, 1, size=batch).astype(np.float32)
  y = rng.integers(0, CLASSES, size=batch).astype(np.int32)
  return x, t, y, target


# ---------------------------------------------------------------------------------------------
# adaflow


def ada_label(dtype: str = "auto", named: bool = False) -> str:
  """The adaflow contender's row name: the compute dtype `model.dtype=dtype` resolves to on this CPU
  (with the setting itself when `named`: several adaflow contenders in one run)."""
  from adaflow.parallel.precision import resolve_compute_dtype
  setting = f"model.dtype={dtype}: " if named else ""
  return f"adaflow jit ({setting}{resolve_compute_dtype(dtype)[0]} compute, fp32 params)"


def ada_labels(dtypes: str) -> dict[str, str]:
  """`--dtype` (one setting or a comma list) -> {row name: model.dtype}; the first is the reference
  every ratio divides by."""
  names = [d for d in dtypes.split(",") if d]
  return {ada_label(d, named=len(names) > 1): d for d in names}


def xla_train_total(mem: dict):
  """The train step's memory of a contender: XLA's buffer total (a dict) for adaflow, RSS bytes for torch."""
  train = mem.get("train")
  return train["total"] if isinstance(train, dict) else train


class AdaflowContender:
  def __init__(self, size: str, batch: int, dtype: str = "auto"):
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import optax
    from adaflow.models.dit import DiT
    from adaflow.models.layers import dtype_from_name
    from adaflow.parallel.precision import resolve_compute_dtype
    depth, d, h = SIZES[size]
    self.jax = jax
    self.model = DiT(image_size=(IMAGE, IMAGE), in_channels=CHANNELS, patch_size=PATCH, hidden_size=d, depth=depth,
                     num_heads=h, num_classes=CLASSES, dtype=dtype_from_name(resolve_compute_dtype(dtype)[0]),
                     remat="dots_no_batch", scan_blocks=True)   # adaflow's config defaults
    x, t, y, target = (jnp.asarray(a) for a in make_inputs(batch))
    self.inputs = (x, t, y)
    self.target = target
    self.params = nn.meta.unbox(jax.jit(self.model.init)(jax.random.PRNGKey(0), x, t, y))
    self.tx = optax.adamw(1e-4)
    self.opt_state = self.tx.init(self.params)
    model, tx = self.model, self.tx

    def loss_fn(p, x, t, y, target):
      return jnp.mean(jnp.square(model.apply(p, x, t, y) - target))

    def train_step(p, o, x, t, y, target):
      loss, g = jax.value_and_grad(loss_fn)(p, x, t, y, target)
      updates, o = tx.update(g, o, p)
      return optax.apply_updates(p, updates), o, loss

    self.fwd = jax.jit(lambda p, x, t, y: model.apply(p, x, t, y)).lower(self.params, *self.inputs).compile()
    self.step = jax.jit(train_step, donate_argnums=(0, 1)).lower(
        self.params, self.opt_state, *self.inputs, target).compile()
    self.num_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(self.params))
    self.run_forward()
    self.run_train()

  def run_forward(self):
    self.fwd(self.params, *self.inputs).block_until_ready()

  def run_train(self):
    self.params, self.opt_state, loss = self.step(self.params, self.opt_state, *self.inputs, self.target)
    loss.block_until_ready()

  def memory(self) -> dict:
    out = {}
    for name, compiled in (("forward", self.fwd), ("train", self.step)):
      m = compiled.memory_analysis()
      total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
      out[name] = {"total": total, "temp": m.temp_size_in_bytes, "args": m.argument_size_in_bytes}
    return out


# ---------------------------------------------------------------------------------------------
# torch / diffusers


def build_torch(size: str, batch: int):
  import torch
  from diffusers import DiTTransformer2DModel
  depth, d, h = SIZES[size]
  torch.manual_seed(0)
  m = DiTTransformer2DModel(num_attention_heads=h, attention_head_dim=d // h, in_channels=CHANNELS,
                            out_channels=CHANNELS, num_layers=depth, sample_size=IMAGE, patch_size=PATCH,
                            num_embeds_ada_norm=CLASSES, norm_eps=1e-6)
  x, t, y, target = make_inputs(batch)
  tin = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(t * 1000.0),
         torch.from_numpy(y).long())
  ttarget = torch.from_numpy(target).permute(0, 3, 1, 2).contiguous()
  return m, tin, ttarget


class TorchContender:
  """mode: eager (fp32) | bf16 (eager under CPU autocast bf16) | compile (torch.compile, fp32)."""

  def __init__(self, module, inputs, target, mode: str, opt):
    import torch
    self.torch, self.mode, self.inputs, self.target, self.opt = torch, mode, inputs, target, opt
    self.module = module
    self.fn = torch.compile(module) if mode == "compile" else module
    self.run_forward()
    self.run_train()

  def _ctx(self):
    import contextlib
    if self.mode == "bf16":
      return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
    return contextlib.nullcontext()

  def run_forward(self):
    torch = self.torch
    self.module.eval()
    with torch.no_grad(), self._ctx():
      x, t, y = self.inputs
      self.fn(x, timestep=t, class_labels=y).sample.float().sum().item()

  def run_train(self):
    torch = self.torch
    self.module.train()
    self.opt.zero_grad(set_to_none=True)
    x, t, y = self.inputs
    with self._ctx():
      out = self.fn(x, timestep=t, class_labels=y).sample
    loss = torch.nn.functional.mse_loss(out.float(), self.target)
    loss.backward()
    self.opt.step()
    loss.item()


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
  """Peak RSS seen by a 1 ms sampling thread between start() and stop()."""

  def __enter__(self):
    self.peak, self.stop_flag = rss_bytes(), False

    def loop():
      while not self.stop_flag:
        self.peak = max(self.peak, rss_bytes())
        time.sleep(0.001)
    self.thread = threading.Thread(target=loop, daemon=True)
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stop_flag = True
    self.thread.join()
    self.peak = max(self.peak, rss_bytes())


def torch_memory_child(size: str, batch: int, mode: str) -> dict:
  """Runs in a subprocess: RSS growth over the pre-model baseline, forward then train."""
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  base = rss_bytes()
  m, inputs, target = build_torch(size, batch)
  opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
  c = TorchContender(m, inputs, target, mode, opt)      # warm-up: one forward + one train step
  with RssSampler() as s_f:
    c.run_forward()
  with RssSampler() as s_t:
    c.run_train()
  return {"forward": s_f.peak - base, "train": s_t.peak - base}


def torch_memory(size: str, batch: int, mode: str) -> dict:
  cmd = [sys.executable, "-m", "experiments.bench_vs_torch", "--_torch_memory", f"{size},{batch},{mode}"]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  if r.returncode != 0:
    return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"rc {r.returncode}"}
  return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# profile


def _hlo_kinds(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> kind: 'fusion:kLoop' / 'fusion:kInput' / 'fusion:kOutput' (with a
  ':dot' suffix when the fused computation contains a dot), else the opcode."""
  import re
  comps, cur = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and "=" not in line.split("{")[0]:
      cur = m.group(1)
      comps[cur] = []
    elif cur is not None:
      comps[cur].append(line)
  kinds = {}
  for body in comps.values():
    for line in body:
      m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(", line)
      if not m:
        continue
      name, op = m.group(1), m.group(2)
      if op == "fusion":
        k = re.search(r"kind=(k\w+)", line)
        c = re.search(r"calls=%?([\w.\-]+)", line)
        has_dot = c is not None and any(" dot(" in l or " convolution(" in l for l in comps.get(c.group(1), []))
        kinds[name] = f"fusion:{k.group(1) if k else '?'}" + (":dot" if has_dot else "")
      else:
        kinds[name] = op
  return kinds


def profile_adaflow(contender: AdaflowContender, steps: int = 2) -> list[tuple[str, float, int]]:
  """[(kind, milliseconds per step, number of ops)] from a jax.profiler trace of the train step:
  the trace's per-HLO-op events, classified with the compiled HLO (fusion kind, dot inside)."""
  jax = contender.jax
  kinds_of = _hlo_kinds(contender.step.as_text())
  d = tempfile.mkdtemp(prefix="adaflow_prof_")
  jax.profiler.start_trace(d)
  for _ in range(steps):
    contender.run_train()
  jax.profiler.stop_trace()
  files = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    return []
  with gzip.open(files[0]) as f:
    trace = json.load(f)
  events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
  kinds = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    name = e.get("name", "")
    if name not in kinds_of:      # runtime wrappers (PjRt, argument handling, ...) are not HLO ops
      continue
    kind = kinds_of[name]
    kinds[kind][0] += e["dur"] / 1000.0 / steps
    kinds[kind][1] += 1
  return sorted(((k, v[0], v[1] // steps) for k, v in kinds.items()), key=lambda r: -r[1])


# ---------------------------------------------------------------------------------------------
# main


def median_rate(times, batch):
  return batch / float(np.median(times)) if times else float("nan")


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_vs_torch", description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="S,B")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--modes", default="eager,bf16,compile")
  ap.add_argument("--profile", action="store_true")
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "vs_torch.md"))
  ap.add_argument("--note", default="", help="a sentence added to the results file (run conditions)")
  ap.add_argument("--dtype", default="auto",
                  help="adaflow's model.dtype (compute dtype), or a comma list (e.g. auto,bfloat16): one adaflow "
                       "contender each, the first the reference; XLA flags: set XLA_FLAGS for the run (recorded)")
  ap.add_argument("--_torch_memory", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  bad = [d for d in a.dtype.split(",") if d not in ("auto", "float32", "bfloat16")]
  if bad or not a.dtype.strip(","):
    ap.error(f"--dtype {a.dtype!r}: each setting must be auto, float32 or bfloat16 (comma-separated)")
  if a._torch_memory:
    size, batch, mode = a._torch_memory.split(",")
    print(json.dumps(torch_memory_child(size, int(batch), mode)))
    return
  from adaflow.parallel.precision import apply_xla_cpu_defaults
  apply_xla_cpu_defaults()        # adaflow's XLA:CPU settings, as the CLI starts with (recorded in the command)

  import jax
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  modes = [m for m in a.modes.split(",") if m]
  results, notes, profiles = {}, [], {}
  started = time.time()
  a.load_start = os.getloadavg()
  for size in a.sizes.split(","):
    t0 = time.time()
    adas = {name: AdaflowContender(size, a.batch, d) for name, d in ada_labels(a.dtype).items()}
    ada = next(iter(adas.values()))
    m, tin, ttarget = build_torch(size, a.batch)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    contenders = dict(adas)
    for mode in modes:
      try:
        contenders[f"torch {mode}"] = TorchContender(m, tin, ttarget, mode, opt)
      except Exception as e:  # e.g. torch.compile without a working C++ toolchain
        notes.append(f"DiT-{size}/2 torch {mode}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        print(notes[-1], flush=True)
    n_torch = sum(p.numel() for p in m.parameters())
    print(f"DiT-{size}/2: setup+compile+warm-up {time.time() - t0:.0f}s; params adaflow {ada.num_params / 1e6:.2f}M, "
          f"diffusers {n_torch / 1e6:.2f}M", flush=True)
    times = {name: {"forward": [], "train": []} for name in contenders}
    for rep in range(a.reps):
      for phase in ("forward", "train"):
        for name, c in contenders.items():
          s = time.perf_counter()
          (c.run_forward if phase == "forward" else c.run_train)()
          times[name][phase].append(time.perf_counter() - s)
      print(f"  rep {rep}: " + ", ".join(f"{n.split(', fp32')[0]} fwd {t['forward'][-1]:.2f}s train {t['train'][-1]:.2f}s"
                                         for n, t in times.items()), flush=True)
    mem = {name: c.memory() for name, c in adas.items()}
    for mode in modes:
      if f"torch {mode}" in contenders and mode != "compile":
        mem[f"torch {mode}"] = torch_memory(size, a.batch, mode)
    if a.profile and size == a.sizes.split(",")[0]:
      profiles[size] = profile_adaflow(ada)
    results[size] = {"times": times, "mem": mem, "params": (ada.num_params, n_torch)}
    del contenders, adas, ada, m, opt
    write_report(a, results, notes, profiles, time.time() - started)   # after every size


def fmt_mb(b):
  return f"{b / 2**20:.0f} MiB" if isinstance(b, (int, float)) else "n/a"


def cpu_flag_line() -> str:
  from adaflow.parallel.precision import cpu_flags
  wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
  have = cpu_flags()
  return " ".join(f for f in wanted if f in have) or "none of " + " ".join(wanted)


def command_line(a) -> str:
  """The command that reproduces the run: its XLA_FLAGS (when set) and every option."""
  flags = os.environ.get("XLA_FLAGS", "")
  return ((f"XLA_FLAGS={shlex.quote(flags)} " if flags else "") +
          f"python -m experiments.bench_vs_torch --sizes {a.sizes} --batch {a.batch} --reps {a.reps} "
          f"--modes {a.modes} --dtype {a.dtype}{' --profile' if a.profile else ''} --out {shlex.quote(a.out)}"
          + (f" --note {shlex.quote(a.note)}" if a.note else ""))


def write_report(a, results, notes, profiles, elapsed):
  from adaflow.parallel.precision import describe_compute_dtype
  from experiments.common import utc_now
  import jax
  import torch
  import diffusers
  ada_name = next(iter(ada_labels(a.dtype)))
  models = " and ".join(f"DiT-{size}/2" for size in a.sizes.split(",") if size)
  lines = [f"# adaflow vs PyTorch (diffusers DiTTransformer2DModel): {models}", "",
           f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()}-core CPU, no GPU. "
           f"Other jobs may have shared the CPU during the run.",
           f"- CPU flags (matmul-relevant): {cpu_flag_line()}; adaflow compute dtype: "
           + "; ".join(describe_compute_dtype(types.SimpleNamespace(dtype=d, attention='auto'))
                     for d in ada_labels(a.dtype).values()) + ".",
           f"- Date: {utc_now()}; jax {jax.__version__}, "
           f"torch {torch.__version__}, diffusers {diffusers.__version__}; total run {elapsed / 60:.1f} min.",
           f"- Command: `{command_line(a)}`",
           f"- CPU load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in a.load_start)}, at the time of "
           f"writing {'/'.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores: above 2 means other jobs competed)."
           + (f" {a.note}" if a.note else ""),
           f"- Setup: 32x32x3 images, patch 2 (256 tokens), 10 classes, batch {a.batch}, no learned sigma; "
           f"median of {a.reps} interleaved repetitions after one warm-up call each (small budget: the "
           f"2-core machine makes DiT-B/2 train steps take many seconds).", ""]
  lines += ["| model | contender | forward img/s | train img/s | train peak memory | adaflow/this fwd | "
            "adaflow/this train | adaflow/this memory |", "|---|---|---|---|---|---|---|---|"]
  bar = []
  for size, r in results.items():
    ada_t = r["times"][ada_name]
    af, at = median_rate(ada_t["forward"], a.batch), median_rate(ada_t["train"], a.batch)
    am = xla_train_total(r["mem"][ada_name])
    for name, t in r["times"].items():
      f, tr = median_rate(t["forward"], a.batch), median_rate(t["train"], a.batch)
      mem = r["mem"].get(name, {})
      mt = xla_train_total(mem)
      ratio = lambda x, y: f"{x / y:.2f}x" if y and y == y else "-"
      lines.append(f"| DiT-{size}/2 | {name} | {f:.1f} | {tr:.1f} | {fmt_mb(mt)} | "
                   f"{'-' if name == ada_name else ratio(af, f)} | {'-' if name == ada_name else ratio(at, tr)} | "
                   f"{'-' if name == ada_name or not isinstance(mt, (int, float)) else f'{am / mt:.2f}x'} |")
      if name not in ada_labels(a.dtype):     # the bar compares with torch, not with another adaflow setting
        bar.append((size, name, at / tr))
  lines += ["", "Memory details (train step unless noted):", ""]
  for size, r in results.items():
    for name, mm in r["mem"].items():
      if isinstance(mm.get("train"), dict):     # an adaflow contender: XLA's buffer plan
        lines.append(f"- DiT-{size}/2 {name}: XLA buffers {fmt_mb(mm['train']['total'])} total = arguments "
                     f"{fmt_mb(mm['train']['args'])} (params + AdamW state + batch) + temporaries "
                     f"{fmt_mb(mm['train']['temp'])}; forward {fmt_mb(mm['forward']['total'])} (temporaries "
                     f"{fmt_mb(mm['forward']['temp'])}). Params: adaflow {r['params'][0] / 1e6:.2f}M, diffusers "
                     f"{r['params'][1] / 1e6:.2f}M (diffusers keeps a timestep/label embedder per block).")
      else:
        lines.append(f"- DiT-{size}/2 {name}: RSS growth {fmt_mb(mm.get('train'))} in a train step, "
                     f"{fmt_mb(mm.get('forward'))} in a forward" + (f" ({mm['error']})" if "error" in mm else ""))
  lines += ["", "Memory methods differ: XLA's number is its exact buffer plan for the step; torch's is "
            "process RSS growth (includes allocator caching and the fp32 master weights, grads and AdamW "
            "state, which adaflow's number also includes as arguments). torch.compile memory was not measured.", ""]
  if notes:
    lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
  lines += ["Team bar: adaflow training >= 1.5x torch images/s.", ""]
  for size, name, ratio in bar:
    lines.append(f"- DiT-{size}/2 vs {name}: {ratio:.2f}x -> {'meets' if ratio >= 1.5 else 'BELOW'} the bar")
  if profiles:
    lines += ["", f"## Where adaflow's train-step time goes (jax.profiler trace, DiT-{list(profiles)[0]}/2)", "",
              "| XLA op kind | ms per step | ops per step |", "|---|---|---|"]
    for size, rows in profiles.items():
      for kind, ms, n in rows[:15]:
        lines.append(f"| {kind} | {ms:.1f} | {n} |")
      step_ms = 1000 * float(np.median(results[size]["times"][ada_name]["train"]))
      lines.append(f"| all HLO ops (sum) | {sum(r[1] for r in rows):.1f} | {sum(r[2] for r in rows)} |")
      lines.append(f"| measured step (median, wall) | {step_ms:.1f} | |")
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
