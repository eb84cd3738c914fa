"""How the gain grows with resolution (issue #25 item 9): each method's analytic FLOPs per image and
its measured sampling speed-up over dense at equal steps, at several token counts.

    nice -n 19 python -m experiments.bench_resolution [--sizes 16,32,64] [--depth 12] [--steps 8] \
        [--batch 8] [--reps 5] [--out experiments/results/resolution.md]

Random weights: this measures speed only, never quality. One DiT width / depth / heads for every
method: DiT-S's width 384 and 6 heads, base patch 2, 4 channels like a latent, but depth 4 and
batch 4 by default, not DiT-S's 12 and 8: on this shared 2-core CPU one dense depth-12 call of 8
images at 1,024 tokens took 56 s, too slow for ~30 timed calls per resolution in ~15 minutes.
Images of --sizes pixels a side (16, 32, 64 -> 64, 256, 1,024 tokens). Every method is built with the
project's own machinery (adaflow.compose: composed_config / ComposedSampler) and counted with
adaflow.compose.flops.sampling_flops:

  dense       the plain DiT.
  PPFlow-2    compose.stages ((0.5, (p, 2p)), (1.0, (p, p))): half the tokens while coarse (the
              two-level fallback of experiments/frontier.py, which the composed arm uses).
  PPFlow-2q   ((0.5, (2p, 2p)), (1.0, (p, p))): a quarter of the tokens, the paper's two levels.
  PPFlow-3    ((0.5, (2p, 2p)), (0.75, (p, 2p)), (1.0, (p, p))); skipped where its coarse tokens carry
              more values than the width (PatchSchedule.over_capacity).
  DiffCR      compose.routing, learned-ratio inference path (lax.switch over routing.bins); every
              (layer, region) ratio initialised at --ratio (routing.init_ratio; the weights are random,
              so no training moves it).
  prune       train-then-prune's timestep groups (compose.grouped): N = 4 groups, k = 0.5, the
              progressive budget (adaflow.prune.budget), each group's structure from the importance
              proposer's greedy round-0 cut (adaflow.prune.search) on magnitude importance of the random
              weights (no proxy search: no data), the weights sliced (adaflow.prune.slicing).
  composed    PPFlow-2 + DiffCR + prune in one ComposedGenerator, structures found as the recipe does,
              on the finest-stage view of the routed PPFlow weights (adaflow.compose.model).

Timing: Euler, --steps steps (sample.edges "snap"), no guidance, --batch images per call; each
sampler is compiled by a first call, then --reps rounds time every method once each (interleaved,
so load changes hit every method alike); speed-up = dense's median / the method's median, in the
same run. Synthetic data: the image shape is a DatasetInfo (adaflow.data), nothing is read.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from adaflow import data as data_lib
from adaflow import flow
from adaflow.compose.generator import ComposedGenerator
from adaflow.methods import composed_config
from adaflow.compose.model import finest_stage_view
from adaflow.compose.sampler import ComposedSampler
from adaflow.config_defaults import base_config
from adaflow.models.grouped import group_key
from adaflow.parallel.precision import resolve_compute_dtype
from adaflow.prune import budget as budget_lib
from adaflow.prune import importance as importance_lib
from adaflow.prune.groups import group_edges
from adaflow.prune.search import ImportanceProposer, SearchSpace
from adaflow.prune.slicing import slice_params
from experiments.common import RESULTS, machine_line, matmul_flags, utc_now

NUM_CLASSES = 10
PAPERS = {   # what the papers report, checked against their text (see the results file's notes)
    "PPFlow-2": "- (the paper's 2 levels are PPFlow-2q's)",
    "PPFlow-2q": "~1.6x (PPF-XL-2, 256x256: 256 tokens)",
    "PPFlow-3": "~2.0x (PPF-XL-3, 256x256: 256 tokens; 2.02x from pretrained SiT-XL/2)",
    "DiffCR": "not quoted",
    "prune": "~20% less compute, ImageNet64 (FLOPs, not a wall-clock speed-up)",
    "composed": "-",
}


# ---- configuration -----------------------------------------------------------------------------
def parse_sizes(text: str) -> tuple[int, ...]:
  try:
    sizes = tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    sizes = ()
  if not sizes or any(s < 1 for s in sizes):
    raise ValueError(f"--sizes: comma-separated image sides in pixels such as 16,32,64, got {text!r}")
  return sizes


def validate_args(args) -> None:
  """Every impossible setting fails here, before anything compiles."""
  args.sizes = parse_sizes(args.sizes)
  p = args.patch
  for flag, v, lo in (("--depth", args.depth, 1), ("--width", args.width, 1), ("--heads", args.heads, 1),
                      ("--patch", p, 1), ("--channels", args.channels, 1), ("--steps", args.steps, 1),
                      ("--batch", args.batch, 1), ("--reps", args.reps, 1)):
    if v < lo:
      raise ValueError(f"{flag}: must be >= {lo}, got {v}")
  if args.width % args.heads:
    raise ValueError(f"--heads: must divide --width {args.width}, got {args.heads}")
  bad = [s for s in args.sizes if s % (2 * p)]
  if bad:
    raise ValueError(f"--sizes: every side must be a multiple of 2 x --patch = {2 * p} (PPFlow's coarse patches), "
                     f"got {bad}")
  if not 0.0 < args.ratio <= 1.0:
    raise ValueError(f"--ratio: DiffCR's kept-token ratio must be in (0, 1], got {args.ratio}")


def info_for(size: int, channels: int) -> data_lib.DatasetInfo:
  """A synthetic dataset description: only the image shape and the label count matter here."""
  return data_lib.DatasetInfo((size, size, channels), NUM_CLASSES, 0, tuple(str(i) for i in range(NUM_CLASSES)))


def dense_config(args):
  """The one model and sampler setting every method shares (objective flow_matching)."""
  c = base_config()
  c.name = "bench_resolution"
  c.model.patch_size = args.patch
  c.model.hidden_size, c.model.depth, c.model.num_heads = args.width, args.depth, args.heads
  c.sample.method, c.sample.steps, c.sample.cfg_scale = "euler", args.steps, 1.0
  c.routing.bins = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
  c.routing.num_regions = 4
  c.routing.target = c.routing.init_ratio = args.ratio
  c.routing.scale = "weight"     # DiffCR's pseudocode (as experiments/frontier.py)
  c.grouped.num_groups, c.grouped.k, c.grouped.largest = 4, 0.5, "data"
  return composed_config(c)


def ppflow_stages(p: int, name: str) -> tuple:
  return {"PPFlow-2": ((0.5, (p, 2 * p)), (1.0, (p, p))),
          "PPFlow-2q": ((0.5, (2 * p, 2 * p)), (1.0, (p, p))),
          "PPFlow-3": ((0.5, (2 * p, 2 * p)), (0.75, (p, 2 * p)), (1.0, (p, p)))}[name]


def method_config(dense, *, stages=None, routing=False):
  """`dense` with PPFlow `stages` (None: off) and DiffCR routing turned on or off."""
  c = dense.copy_and_resolve_references()
  c.compose.ppflow, c.compose.stages = stages is not None, stages or ()
  c.compose.routing = routing
  return c


# ---- parameters ----------------------------------------------------------------------------------
def random_params(config, info, seed: int = 0):
  return nn.meta.unbox(ComposedGenerator(config, info).init(jax.random.PRNGKey(seed)))


def grouped(config, info, params, finest_stage: int):
  """(config with compose.grouped on, {group_i: sliced params}): the progressive budget, each group's
  greedy importance cut on the finest-stage dense view of `params`, the weights sliced."""
  g = config.grouped
  view_cfg = method_config(config)                      # plain one-stage DiT = the finest-stage view
  view = ComposedGenerator(view_cfg, info).models[0]
  view_params = finest_stage_view(params, finest_stage) if config.compose.ppflow else params
  imp = importance_lib.magnitude(view_params, view)
  budgets = budget_lib.group_budgets(g.num_groups, g.k, budget_lib.model_flops(view), g.largest)
  rng = np.random.default_rng(int(g.search_seed))
  structures = [ImportanceProposer().propose(SearchSpace(view, imp, float(b), int(g.mlp_granularity),
                                                         bool(g.allow_block_drop)), [], 0, 1, rng)[0]
                for b in budgets]
  edges = group_edges(g.num_groups, flow.make_interpolant(config.flow), tuple(g.snr_range_db))
  c = config.copy_and_resolve_references()
  c.compose.grouped = True
  c.compose.group_blocks = tuple(tuple((b.num_heads, b.mlp_dim) for b in s.block_specs()) for s in structures)
  c.compose.group_edges = tuple(float(e) for e in edges)
  base = ComposedGenerator(config, info).models[0]      # the (routed, multi-stage) network being sliced
  return c, {group_key(i): slice_params(params, base, s) for i, s in enumerate(structures)}


def methods(args, info) -> dict:
  """{name: ComposedSampler} at one resolution."""
  dense = dense_config(args)
  p = args.patch
  out = {"dense": ComposedSampler(dense, info, random_params(dense, info))}
  for name in ("PPFlow-2", "PPFlow-2q", "PPFlow-3"):
    c = method_config(dense, stages=ppflow_stages(p, name))
    if ComposedGenerator(c, info).spec.schedule.over_capacity(args.channels, args.width):
      continue      # coarse tokens wider than the model (see the module docstring)
    out[name] = ComposedSampler(c, info, random_params(c, info))
  c = method_config(dense, routing=True)
  out["DiffCR"] = ComposedSampler(c, info, random_params(c, info))
  c, params = grouped(dense, info, random_params(dense, info), 0)
  out["prune"] = ComposedSampler(c, info, params)
  c = method_config(dense, stages=ppflow_stages(p, "PPFlow-2"), routing=True)
  c, params = grouped(c, info, random_params(c, info), 1)
  out["composed"] = ComposedSampler(c, info, params)
  return out


# ---- measurement --------------------------------------------------------------------------------
def time_methods(samplers: dict, args) -> dict:
  """{name: (compile s, [s per call])}: one compiling call each, then --reps interleaved rounds."""
  labels = np.arange(args.batch) % NUM_CLASSES

  def call(s):
    t = time.perf_counter()
    s.sample(jax.random.PRNGKey(0), labels, steps=args.steps, method="euler", batch_size=args.batch)
    return time.perf_counter() - t
  first = {name: call(s) for name, s in samplers.items()}
  times = {name: [] for name in samplers}
  for _ in range(args.reps):
    for name, s in samplers.items():
      times[name].append(call(s))
  return {name: (max(0.0, first[name] - float(np.median(times[name]))), times[name]) for name in samplers}


def measure(args, log) -> list[dict]:
  rows = []
  for size in args.sizes:
    info = info_for(size, args.channels)
    samplers = methods(args, info)
    flops = {n: s.flops_per_image(steps=args.steps, method="euler", cfg_scale=1.0) for n, s in samplers.items()}
    timed = time_methods(samplers, args)
    tokens = (size // args.patch) ** 2
    dense_ms = 1000 * float(np.median(timed["dense"][1])) / args.batch
    for name, (compile_s, t) in timed.items():
      ms = 1000 * float(np.median(t)) / args.batch
      rows.append(dict(tokens=tokens, size=size, method=name, gflops=flops[name] / 1e9,
                       groups=tuple(samplers[name].config.compose.group_blocks),
                       flops_ratio=flops["dense"] / flops[name], ms=ms, speedup=dense_ms / ms,
                       spread=(1000 * min(t) / args.batch, 1000 * max(t) / args.batch), compile_s=compile_s))
      log(f"{tokens} tokens {name}: {flops[name] / 1e9:.2f} GFLOPs ({rows[-1]['flops_ratio']:.2f}x), "
          f"{ms:.1f} ms/image ({rows[-1]['speedup']:.2f}x), compile {compile_s:.1f} s")
  return rows


# ---- report ------------------------------------------------------------------------------------
def report(args, rows, ctx) -> str:
  g = dense_config(args).grouped
  edges = group_edges(g.num_groups, flow.make_interpolant(dense_config(args).flow), tuple(g.snr_range_db))
  L = ["# How the gain grows with resolution: FLOPs and measured sampling speed-up over dense (random weights)", "",
       f"Date: {ctx['date']}. Machine: {ctx['machine']}. CPU flags: {ctx['flags']}. Load average at the start: "
       f"{ctx['load']}. Run under `nice -n 19` beside another long training job on the same 2 cores: absolute ms "
       "carry that load; the interleaved ratios are the figures to read.",
       f"Command: `{ctx['command']}` (total {ctx['total_s']:.0f} s).",
       f"Model: DiT width {args.width}, depth {args.depth}, {args.heads} heads, MLP ratio 4, base patch {args.patch}, "
       f"{args.channels} channels (latent-like), {NUM_CLASSES} classes, random weights, compute dtype {ctx['dtype']}; "
       f"images {', '.join(f'{s}x{s}' for s in args.sizes)} -> "
       f"{', '.join(str((s // args.patch) ** 2) for s in args.sizes)} tokens. Speed only: no quality is measured.",
       f"Sampling: Euler, {args.steps} steps, sample.edges \"snap\", no guidance, batch {args.batch}; ms / image = "
       f"median of {args.reps} interleaved calls after a compiling one; speed-up = dense ms / method ms in the same "
       "run; FLOPs = adaflow.compose.flops.sampling_flops (matmuls, 2mnk) per image.",
       f"Methods: PPFlow-2 {ppflow_stages(args.patch, 'PPFlow-2')} (half the tokens while coarse), PPFlow-2q "
       f"{ppflow_stages(args.patch, 'PPFlow-2q')} (a quarter: the paper's two levels), PPFlow-3 "
       f"{ppflow_stages(args.patch, 'PPFlow-3')} (patches in pixels); "
       f"DiffCR: learned-ratio inference path with every (layer, region) ratio at {args.ratio:g} (routing.init_ratio = "
       "target; random weights, nothing trained), bins 1.0..0.3, 4 regions, router cost included; prune: "
       f"{g.num_groups} timestep groups (inner edges t = {' / '.join(f'{e:.2f}' for e in edges[1:-1])}, equal SNR-dB "
       f"width), k = {g.k:g}, largest = {g.largest}, i.e. budgets "
       f"{' / '.join(f'{b:.3g}' for b in budget_lib.budget_fractions(g.num_groups, g.k, g.largest))} of the dense "
       "network's FLOPs at that resolution; structures from the importance proposer's greedy "
       "round-0 cut on magnitude importance of the random weights (no proxy search, no fine-tune); composed: "
       "PPFlow-2 + DiffCR + prune in one ComposedGenerator (structures searched on the finest-stage view, as the "
       "compose recipe does).", "",
       "| tokens | method | GFLOPs / image | FLOPs ratio (dense / method) | ms / image [min, max] | measured speed-up | "
       "compile s | papers |",
       "|---:|---|---:|---:|---|---:|---:|---|"]
  for r in rows:
    L.append(f"| {r['tokens']} | {r['method']} | {r['gflops']:.2f} | {r['flops_ratio']:.2f}x | {r['ms']:.1f} "
             f"[{r['spread'][0]:.1f}, {r['spread'][1]:.1f}] | {r['speedup']:.2f}x | {r['compile_s']:.1f} | "
             f"{PAPERS.get(r['method'], '-') if r['method'] != 'dense' else '-'} |")
  L += ["", "Efficiency of each method (measured speed-up / FLOPs ratio; 1.00 = the FLOPs saving fully shows up in time):",
        "", "| method | " + " | ".join(f"{(s // args.patch) ** 2} tokens" for s in args.sizes) + " |",
        "|---|" + "---:|" * len(args.sizes)]
  for name in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
    cells = []
    for s in args.sizes:
      r = next((r for r in rows if r["method"] == name and r["size"] == s), None)
      cells.append(f"{r['speedup'] / r['flops_ratio']:.2f}" if r else "-")
    L.append(f"| {name} | " + " | ".join(cells) + " |")
  L += ["", "Pruned structures, (heads, MLP channels) of each kept block for each timestep group, noisiest first (dense: "
        f"({args.heads}, {4 * args.width}) x {args.depth}):", ""]
  L += [f"- {r['tokens']} tokens, {r['method']}: " + "; ".join(" ".join(f"({h}, {m})" for h, m in grp)
                                                          for grp in r["groups"]) for r in rows if r["groups"]]
  L += ["", *reading(args, rows), "", "## The papers' figures", "",
        "- PPFlow (arXiv 2506.23543): PPF-XL-2 and PPF-XL-3 sample ~1.6x and ~2.0x faster than SiT-XL/2 on "
        "class-conditional ImageNet 256x256 (32x32x4 latents, patch 2: 256 tokens) at comparable FID (Fig. 1; "
        "the v2 abstract: 2.02x from pretrained SiT-XL/2, 2.04x from scratch in SiT-B). Its two levels are 2p x 2p "
        "then p x p (PPFlow-2q here).",
        "- DiffCR (arXiv 2412.16822): not quoted (its abstract gives no speed-up figure, and none could be checked "
        "against the paper's text).",
        "- Train-then-prune (arXiv 2312.13307, v3 abstract): \"saving about 20% of computational resources\" on "
        "ImageNet64 (IDDPM) with a better FID: a compute saving, not a measured speed-up; its budget "
        "FLOPs_g(i) = (i/N + (N - i)/N k) F is the one adaflow.prune.budget uses.", ""]
  return "\n".join(L) + "\n"


def reading(args, rows) -> list[str]:
  """A short plain reading, every number from this run's rows."""
  lo, hi = min(args.sizes), max(args.sizes)
  tok = lambda s: (s // args.patch) ** 2
  dense = {r["size"]: r for r in rows if r["method"] == "dense"}
  per_gf = ", ".join(f"{dense[s]['ms'] / dense[s]['gflops']:.1f} at {tok(s)}" for s in args.sizes)
  eff = {(r["method"], r["size"]): r["speedup"] / r["flops_ratio"] for r in rows if r["method"] != "dense"}
  names = list(dict.fromkeys(m for m, _ in eff))
  short = [f"{m} {eff[(m, lo)]:.2f}" for m in names if eff[(m, lo)] < 1.0]
  over = [f"{m} {eff[(m, hi)]:.2f}" for m in names if eff[(m, hi)] > 1.0]
  at = lambda m, s: next((r for r in rows if r["method"] == m and r["size"] == s), None)
  L = ["## Reading", "",
       f"- Measured speed-up over dense, {' -> '.join(str(tok(s)) for s in args.sizes)} tokens: "
       + "; ".join(f"{m} " + " -> ".join(f"{at(m, s)['speedup']:.2f}x" for s in args.sizes) for m in names) + ".",
       f"- Dense ms per analytic GFLOP (per image): {per_gf} tokens."]
  if short:
    L.append(f"- At {tok(lo)} tokens the measured speed-up falls short of the FLOPs ratio ({', '.join(short)}): with "
             f"{args.batch} images x {tok(lo)} tokens every matmul is small, so per-call and per-op costs that do not "
             "shrink with the tokens or channels removed (the sampler's steps, adaLN and the timestep/label MLPs, "
             "DiffCR's router, top-k gather/scatter and switch over bins, PPFlow's space-to-depth reshapes, the pruned "
             "groups' four networks with ragged head/channel counts, whose blocks no longer run as one scanned body) are "
             "a large share of the time; the more pieces a method adds (composed: stages x groups x routed blocks) the "
             "larger that share.")
  if over:
    L.append(f"- At {tok(hi)} tokens the measured speed-up exceeds the FLOPs ratio ({', '.join(over)}): dense's time "
             "per GFLOP rises with N (above), so the work that grows as N^2 costs more time than its FLOPs say: the "
             "attention core's two matmuls with a head-dim contraction run at a lower rate than the projections, and "
             "the softmax and memory traffic of each head's N x N matrix are not in the count at all (a likely cause, "
             "not profiled here). Fewer tokens (PPFlow's coarse stages, DiffCR's kept tokens) shrink that work "
             "quadratically, fewer heads (prune) linearly, so time falls more than FLOPs; the composed model "
             "compounds it.")
  pruned = [r for r in rows if r["method"] == "prune"]
  if pruned and all(m == 4 * args.width for r in pruned for grp in r["groups"] for _, m in grp):
    L.append("- The greedy cut on random weights removed attention heads only (every kept block keeps all its MLP "
             "channels, list above): prune's saving here is all attention, whose share of the cost grows with N.")
  p2, p3 = at("PPFlow-2q", 32 if 32 in args.sizes else hi), at("PPFlow-3", 32 if 32 in args.sizes else hi)
  if p2 and p3:
    L.append(f"- Beside the paper (256 tokens, SiT-XL/2, its own hardware): PPFlow-2q {p2['speedup']:.2f}x vs ~1.6x, "
             f"PPFlow-3 {p3['speedup']:.2f}x vs ~2.0x at {p2['tokens']} tokens here; the FLOPs ratios "
             f"({p2['flops_ratio']:.2f}x, {p3['flops_ratio']:.2f}x) are close to the inverse of the paper's theoretical "
             "token costs 0.625 and 0.5 of dense (1.6x, 2x). PPFlow-2 (half the tokens while coarse) has no paper figure.")
  L.append("- Random weights: the DiffCR ratios and the pruned structures are what the configured targets give, not what "
           "training would learn (a learned DiffCR spreads the ratios over layers and regions; a proxy search picks "
           "other units), so FLOPs and speed here are those of the configuration, not of a trained model's quality.")
  return L


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_resolution", description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="16,32,64", help="image sides in pixels (16,32,64 -> 64,256,1024 tokens at patch 2)")
  ap.add_argument("--width", type=int, default=384)
  ap.add_argument("--depth", type=int, default=4, help="DiT-S has 12; 4 keeps the run within ~15 min on 2 cores")
  ap.add_argument("--heads", type=int, default=6)
  ap.add_argument("--patch", type=int, default=2)
  ap.add_argument("--channels", type=int, default=4)
  ap.add_argument("--steps", type=int, default=8, help="Euler steps, every method")
  ap.add_argument("--batch", type=int, default=4, help="images per timed call")
  ap.add_argument("--reps", type=int, default=5, help="interleaved timed rounds (median)")
  ap.add_argument("--ratio", type=float, default=0.6, help="DiffCR kept-token ratio of every layer and region")
  ap.add_argument("--out", default=os.path.join(RESULTS, "resolution.md"))
  args = ap.parse_args(argv)
  validate_args(args)
  t0 = time.time()
  ctx = {"date": utc_now(), "flags": matmul_flags(),
         "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)", "machine": machine_line(),
         "dtype": resolve_compute_dtype("auto")[0],
         "command": (f"nice -n {os.nice(0)} " if os.nice(0) else "") + "python -m experiments.bench_resolution"
                    + "".join(f" {a}" for a in sys.argv[1:])}
  log = lambda m: print(f"[resolution {time.time() - t0:6.0f}s] {m}", flush=True)
  rows = measure(args, log)
  ctx["total_s"] = time.time() - t0
  text = report(args, rows, ctx)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
