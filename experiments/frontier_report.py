"""The frontier benchmark's analysis and report (experiments/frontier.py measures, this reads).

From the measured arms (each with `kind`, `res` = FD and its interval, NFE, GFLOPs, ms, ..., and
`boot` = its FD on the bootstrap rows shared by every arm): each model's lower envelope of cost vs
FD, the speed-up at matched FD against dense's envelope (point and shared-resample interval), the
markdown tables (`report`) and the plot (`plot`). Nothing here trains, samples or times.
"""
from __future__ import annotations

import math
import os

import numpy as np

from adaflow.models.step_selector import action_label

# Arm kinds: the model a row belongs to (experiments/frontier.py names its arms with them).
DENSE, ROUTED, PRUNE = "dense", "DiffCR (learned ratios)", "train-then-prune"
COMPOSED, COMPOSED_POLICY, ADADIFF = "composed", "composed + policy", "AdaDiff policy (dense)"
# The goals of issue #25: frontier speed-up at matched FD beyond dense's envelope.
GOALS = {"PPFlow": 1.2, ROUTED: 1.2, COMPOSED: 1.5}


# ---- matched quality: lower envelopes and interpolated costs ----------------------------------------
def envelope(cost: np.ndarray, fd: np.ndarray) -> np.ndarray:
  """Indices of the lower envelope of points (cost [P], FD [P]): sorted by cost, each point with a
  lower FD than every cheaper point (the settings a user would pick)."""
  order = np.argsort(cost, kind="stable")
  keep, best = [], math.inf
  for i in order:
    if fd[i] < best:
      keep.append(i)
      best = fd[i]
  return np.asarray(keep, int)


def cost_at(cost: np.ndarray, fd: np.ndarray, level: float) -> float:
  """The cost at which the envelope of (cost, FD) reaches FD `level`: linear in log cost between
  its points; +inf below its best FD (never reached), its cheapest cost at or above its cheapest
  point's FD (a bound: cheaper settings were not measured)."""
  e = envelope(cost, fd)
  c, f = np.log(cost[e]), fd[e]          # f decreasing as c grows
  if level < f[-1]:
    return math.inf
  if level >= f[0]:
    return float(cost[e][0])
  j = int(np.nonzero(f <= level)[0][0])   # first envelope point at or below the level (j >= 1)
  w = (f[j - 1] - level) / (f[j - 1] - f[j])
  return float(np.exp(c[j - 1] + w * (c[j] - c[j - 1])))


def ratio_interval(point: float, boot: np.ndarray) -> tuple[float, float, float]:
  """(point, low, high) of a speed-up from its resampled values (percentile, no interpolation, so
  +inf resamples stay +inf)."""
  lo, hi = np.percentile(boot, [2.5, 97.5], method="lower"), np.percentile(boot, [97.5], method="higher")[0]
  return float(point), float(lo[0]), float(hi)


def dense_points(arms, axis: str):
  d = [a for a in arms if a.kind == DENSE and not a.variant]
  return np.asarray([a.res[axis] for a in d]), np.asarray([a.res["fd"] for a in d]), np.stack([a.boot for a in d], 1)


def point_speedup(a, arms, axis: str) -> tuple[float, float, float]:
  """Dense's envelope cost at this arm's FD over its cost, with the shared-resample interval."""
  dc, dfd, dboot = dense_points(arms, axis)
  point = cost_at(dc, dfd, a.res["fd"]) / a.res[axis]
  boot = np.asarray([cost_at(dc, dboot[r], a.boot[r]) / a.res[axis] for r in range(len(a.boot))])
  return ratio_interval(point, boot)


def frontier_speedup(kind: str, arms, axis: str, level: float):
  """(point, low, high, bound) of dense's envelope cost at FD `level` over `kind`'s envelope cost
  there, or None when the method's envelope never reaches the level. bound: "" (both interpolated),
  ">=" (the level is at or above the method's cheapest point's FD: its true cost may be lower),
  "<=" (likewise for dense), "?" (both)."""
  pts = [a for a in arms if a.kind == kind and not a.variant]
  mc, mfd = np.asarray([a.res[axis] for a in pts]), np.asarray([a.res["fd"] for a in pts])
  mboot = np.stack([a.boot for a in pts], 1)
  dc, dfd, dboot = dense_points(arms, axis)

  def one(mf, df):
    own = cost_at(mc, mf, level)
    return math.nan if not math.isfinite(own) else cost_at(dc, df, level) / own
  point = one(mfd, dfd)
  if math.isnan(point):
    return None
  boot = np.asarray([one(mboot[r], dboot[r]) for r in range(len(mboot))])
  boot = np.where(np.isnan(boot), 0.0, boot)    # a resample whose method misses the level: no speed-up
  m_cheap = level >= mfd[envelope(mc, mfd)][0]
  d_cheap = level >= dfd[envelope(dc, dfd)][0]
  bound = "?" if m_cheap and d_cheap else ">=" if m_cheap else "<=" if d_cheap else ""
  return ratio_interval(point, boot) + (bound,)


# ---- report ------------------------------------------------------------------------------------
def ci(r, k="fd") -> str:
  return f"{r[k]:.3f} [{r[k + '_low']:.3f}, {r[k + '_high']:.3f}]"


def fmt_ratio(v) -> str:
  return "inf" if not math.isfinite(v) else f"{v:.2f}x"


def sp(t) -> str:
  """A speed-up (point, low, high[, bound]) as text."""
  if t is None:
    return "-"
  point, lo, hi = t[:3]
  bound = t[3] if len(t) > 3 else ""
  if not math.isfinite(point):
    return f"> all dense (interval low {fmt_ratio(lo)})"
  return f"{bound}{fmt_ratio(point)} [{fmt_ratio(lo)}, {fmt_ratio(hi)}]"


def method_kinds(arms) -> list[str]:
  return list(dict.fromkeys(a.kind for a in arms if not a.policy and a.kind not in (DENSE, "timing repeat")))


def plot(arms, floor: float, floor_ref, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  for ax, axis, xlabel in ((axes[0], "gflops", "analytic GFLOPs / image (log)"),
                           (axes[1], "ms", "sampling wall-clock, ms / image (log)")):
    for kind in [DENSE] + method_kinds(arms):
      pts = [a for a in arms if a.kind == kind and not a.variant]
      x, y = np.asarray([a.res[axis] for a in pts]), np.asarray([a.res["fd"] for a in pts])
      e = envelope(x, y)
      line, = ax.plot(x[e], y[e], "-", lw=2 if kind == DENSE else 1.3, color="black" if kind == DENSE else None,
                      label=f"{kind} (envelope)")
      ax.plot(x, y, "o", ms=3, alpha=0.5, color=line.get_color())
      if kind == DENSE:
        for a in pts:
          ax.annotate(f"{a.method}{a.steps}", (a.res[axis], a.res["fd"]), fontsize=5, xytext=(2, 2),
                      textcoords="offset points")
    for a in arms:
      if a.policy:
        ax.errorbar([a.res[axis]], [a.res["fd"]], yerr=np.clip([[a.res["fd"] - a.res["fd_low"]], [a.res["fd_high"] - a.res["fd"]]], 0, None),
                    fmt="*" if a.assign is None else "x", ms=10 if a.assign is None else 6, capsize=2,
                    label=a.name)
    ax.axhline(floor, color="gray", lw=0.8, ls=":", label="real vs real")
    ax.axhspan(floor_ref.low, floor_ref.high, color="gray", alpha=0.15, lw=0)
    ax.axhline(floor_ref.value, color="gray", lw=0.8, ls="--", label="real vs reference (a perfect generator)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # A floor interval reaching 0 would stretch the log axis down to nothing: start below the lowest FD.
    ax.set_ylim(bottom=0.7 * min([a.res["fd"] for a in arms if a.res["fd"] > 0] + [floor, floor_ref.value]))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FD, classifier features (log)")
  axes[0].set_title("each method's frontier (lines: lower envelopes over all solvers x steps)", fontsize=9)
  axes[1].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(args, ctx, arms, floor, floor_ref, secs, path_md, path_png) -> str:
  by_name = {a.name: a for a in arms}
  kinds = method_kinds(arms)
  L = ["# Each method's quality-vs-compute frontier against dense's, every method on dense's grid"
       + (" (SMOKE: tiny budgets, numbers meaningless)" if args.smoke else ""), ""]
  L.append(f"Date: {ctx['date']}. Machine: {ctx['machine']}. CPU flags: {ctx['flags']}.")
  L.append(f"Command: `python -m experiments.frontier {' '.join(ctx['argv'])}` (total {ctx['total_s']:.0f} s).")
  L.append(f"Base: {ctx['base']} at step {ctx['base_step']} x batch {ctx['batch']} = {ctx['base_images']} training "
           f"images ({ctx['model']}). Fine-tuning budget per method: {args.ft_fraction:g} x base = {ctx['ft_images']} "
           f"images = {ctx['ft_steps']} steps of {ctx['batch']} (train-then-prune: {ctx['ft_steps']} // N per group; "
           f"composed: the same budget for EACH ingredient, its PPFlow stage being the PPFlow arm). Policies: {ctx['sel']}.")
  L.append(f"PPFlow stages (t_end, patch): {ctx['ppflow']}.")
  L.append(f"Grid (dense and every method): {', '.join(action_label(p) for p in args.grid)}; sample.edges = snap, "
           "AB2 keeps its history across edges (experiments/frontier.py's docstring); ablations at "
           f"{', '.join(action_label(p) for p in args.ablation_grid)}.")
  L.append(f"Quality: {args.num_eval} class-balanced samples per arm, the same labels and noise for every grid arm; FD "
           f"of classifier features (not Inception), 95% intervals from {args.resamples} bootstrap resamples shared by "
           f"every arm (so differences, envelopes and interpolated speed-ups are paired); floors: real-vs-reference "
           f"({args.num_eval} real images scored like an arm) **{floor_ref.value:.3f} [{floor_ref.low:.3f}, "
           f"{floor_ref.high:.3f}]**, real-vs-real ({args.num_eval} vs {args.num_eval}) {floor:.3f}. Cost: analytic "
           f"FLOPs per image (primary) and ms per image, median of {args.reps} calls of {args.batch} images "
           "interleaved over one model's arms after a first (compiling) call (one model's programs compiled at a "
           "time; the timing spread below bounds the drift between models). NFE: network evaluations per image without "
           f"the CFG doubling (CFG scale {ctx['cfg']}: every evaluation runs twice).")
  L.append("")
  L.append("## Frontier speed-up at matched quality")
  L.append("")
  L.append("Dense cost at FD L (its lower envelope over ALL solvers and steps, linear in log cost between points) over "
           "the method's own envelope cost at L; 95% interval from the shared bootstrap resamples (a resample where "
           "the method misses L counts as 0x). `>=`: L is at or above the method's cheapest point's FD (its true "
           "cost there may be lower); `<=`: likewise for dense; `?`: both; `-`: the method never reaches L.")
  L.append("")
  L.append("| method | " + " | ".join(f"FD {lv:g}: FLOPs | FD {lv:g}: ms" for lv in args.fd_levels) + " |")
  L.append("|---|" + "---|---|" * len(args.fd_levels))
  table = {}
  for kind in kinds:
    cells = []
    for lv in args.fd_levels:
      f, m = frontier_speedup(kind, arms, "gflops", lv), frontier_speedup(kind, arms, "ms", lv)
      table[(kind, lv)] = f
      cells += [sp(f), sp(m)]
    L.append(f"| {kind} | " + " | ".join(cells) + " |")
  L.append("")
  L.append("## Dense grid")
  L.append("")
  L.append("| solver | steps | NFE | FD [95% CI] | class acc | GFLOPs / image | ms / image | compile s | on the FLOPs envelope |")
  L.append("|---|---:|---:|---|---:|---:|---:|---:|---|")
  dense = [a for a in arms if a.kind == DENSE]
  on = set(envelope(np.asarray([a.res["gflops"] for a in dense]), np.asarray([a.res["fd"] for a in dense])))
  for i, a in enumerate(dense):
    r = a.res
    L.append(f"| {a.method} | {a.steps} | {r['nfe']:.0f} | {ci(r)} | {r['acc']:.3f} | {r['gflops']:.4f} | "
             f"{r['ms']:.3f} | {r['compile_s']:.1f} | {'yes' if i in on else ''} |")
  L.append("")
  L.append("## Every method point")
  L.append("")
  L.append("Matched-FD speed-up: dense's envelope cost at this point's FD over its cost (`inf`: better than every "
           "dense point). Same-point: dense / method at the same solver and steps; FD diff = method - dense there, "
           "paired (same noise, labels and resamples).")
  L.append("")
  L.append("| arm | training images | NFE | FD [95% CI] | FD diff vs dense same point | class acc | GFLOPs | ms | "
           "matched-FD speed-up, FLOPs | matched-FD speed-up, ms | same-point speed-up FLOPs / ms |")
  L.append("|---|---:|---:|---|---|---:|---:|---:|---|---|---|")
  for a in arms:
    if a.kind in (DENSE, "timing repeat") or a.variant or a.policy:
      continue
    r, d = a.res, by_name[a.pair].res
    L.append(f"| {a.name} | {a.images} | {r['nfe']:.0f} | {ci(r)} | {ci(r, 'diff')} | {r['acc']:.3f} | "
             f"{r['gflops']:.4f} | {r['ms']:.3f} | {sp(point_speedup(a, arms, 'gflops'))} | "
             f"{sp(point_speedup(a, arms, 'ms'))} | {d['gflops'] / r['gflops']:.2f}x / {d['ms'] / r['ms']:.2f}x |")
  L.append("")
  L.append("## Step policies and their baselines")
  L.append("")
  L.append("Each policy samples its own noise (the selector's); its baselines use the SAME noise and labels: the best "
           "fixed action of its set (lowest FD among its model's grid points costing at most the policy's mean NFE) "
           "and its own choices shuffled over the inputs (same action mix). FD diff = baseline - policy, paired.")
  L.append("")
  L.append("| arm | NFE (mean) | FD [95% CI] | FD diff vs the policy | class acc | GFLOPs | ms | matched-FD speed-up vs "
           "dense, FLOPs | actions chosen |")
  L.append("|---|---:|---|---|---:|---:|---:|---|---|")
  for a in arms:
    if not a.policy:
      continue
    r = a.res
    hist = ", ".join(f"{k} {v:.0%}" for k, v in r.get("histogram", {}).items() if v > 0)
    L.append(f"| {a.name} | {r['nfe']:.2f} | {ci(r)} | {ci(r, 'diff') if 'diff' in r else ''} | {r['acc']:.3f} | "
             f"{r['gflops']:.4f} | {r['ms']:.3f} | {sp(point_speedup(a, arms, 'gflops'))} | {hist} |")
  L.append("")
  L.append("## The sampling grid at partition edges and AB2's history")
  L.append("")
  L.append("Each row against the same model at the same AB2 steps with the defaults (edges snap, history kept): "
           "FD diff = this rule - default, paired.")
  L.append("")
  L.append("| model | AB2 steps | rule | NFE (default -> this) | FD [95% CI] | FD diff vs default | GFLOPs (default -> this) |")
  L.append("|---|---:|---|---|---|---|---|")
  for a in arms:
    if not a.variant:
      continue
    r, d = a.res, by_name[a.pair].res
    L.append(f"| {a.kind} | {a.steps} | {a.variant} | {d['nfe']:.0f} -> {r['nfe']:.0f} | {ci(r)} | {ci(r, 'diff')} | "
             f"{d['gflops']:.4f} -> {r['gflops']:.4f} |")
  L.append("")
  L.append("## Timing spread")
  L.append("")
  rep = [a for a in arms if a.repeat_of is not None]
  ratios = [a.res["ms"] / by_name[a.repeat_of].res["ms"] for a in rep]
  spreads = [(max(a.times) - min(a.times)) / float(np.median(a.times)) for a in dense]
  L.append("Two dense points timed again as separate arms at the end of the run (the same program as at its start): "
           + "; ".join(f"{a.repeat_of}: {by_name[a.repeat_of].res['ms']:.3f} vs {a.res['ms']:.3f} ms ({x:.3f}x)"
                       for a, x in zip(rep, ratios))
           + f". Within an arm, (max - min) / median of its {args.reps} calls over the dense points: median "
           f"{np.median(spreads):.1%}, largest {max(spreads):.1%}. Read ms ratios closer to 1 than that as equal.")
  L.append("")
  L.append("## Goals (issue #25)")
  L.append("")
  for kind in kinds:
    goal = next((g for k, g in GOALS.items() if kind.startswith(k) and "scratch" not in kind), None)
    if goal is None:
      continue
    got = [(lv, table[(kind, lv)]) for lv in args.fd_levels if table[(kind, lv)] is not None]
    best = max(got, key=lambda x: x[1][0], default=None)
    met = [lv for lv, t in got if t[0] >= goal and t[1] >= 1.0 and t[3] in ("", ">=")]
    L.append(f"- {kind}: >= {goal}x beyond dense's envelope at matched FD (FLOPs): "
             + (f"best {sp(best[1])} at FD {best[0]:g}; " if best else "reaches none of the FD levels; ")
             + (f"**met** at FD {', '.join(f'{lv:g}' for lv in met)} (interval above 1x)." if met else "**not met**."))
  for a in arms:
    if a.policy and a.assign is None:
      base = [b for b in arms if b.pair == a.name]
      wins = [b for b in base if b.res["diff_low"] > 0]
      L.append(f"- {a.name}: beyond its baselines (FD lower than each, paired interval above 0, at mean NFE "
               f"{a.res['nfe']:.2f}): " + "; ".join(f"{b.name.split(': ', 1)[1]} (NFE {b.res['nfe']:.2f}) FD diff "
                                                      f"{ci(b.res, 'diff')}" for b in base)
               + f": **{'met' if len(wins) == len(base) else 'not met'}**.")
  reused = {k: v for k, (v, r) in secs.items() if r}
  known = sum(v for v in reused.values() if v is not None)
  L.append(f"- Whole benchmark on this machine: {(ctx['total_s'] + known) / 60:.1f} min (this invocation "
           f"{ctx['total_s'] / 60:.1f} min" + (f" + {known / 60:.1f} min of training recorded by the earlier invocation "
           "that made the reused stages" if reused else "") + "; goal: < 90 min on a 2-core CPU with the base cached)"
           + (" (some reused stages did not record their time)" if None in reused.values() else "") + ".")
  L.append("")
  L.append("Training seconds: " + (", ".join(
      f"{k} {'?' if v is None else f'{v:.0f}'}{' (reused)' if r else ''}" for k, (v, r) in secs.items()) or "none")
      + " (composed: its routing, pruning, grouped and policy stages; its PPFlow stage is the PPFlow arm's).")
  L.append("")
  L.append(f"![frontier]({os.path.basename(path_png)})")
  text = "\n".join(L) + "\n"
  with open(path_md, "w") as f:
    f.write(text)
  return text

