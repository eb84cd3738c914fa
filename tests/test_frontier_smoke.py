"""experiments/frontier.py (issue #25 benchmark driver) and its report (experiments/frontier_report.py):
bad flags fail before anything trains, and `python -m experiments.frontier --smoke` runs the whole protocol
end to end (base, snapshot, every method's fine-tune, every arm on the grid, every table, plot) in a temporary
directory, so the script the real run depends on cannot rot."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from adaflow import data as data_lib
from adaflow.compose import flops as flops_lib
from adaflow.compose.generator import ComposedGenerator
from adaflow.methods import composed_config
from adaflow.eval.bootstrap import Interval
from conftest import tiny_config
from experiments import frontier
from experiments import frontier_report as report_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CI = r"\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]"


@pytest.mark.parametrize("flags, field", [
    (["--grid", "euler:4,rk4:8"], "--grid"),
    (["--grid", "euler:4,ab2:8", "--policy_actions", "euler:4,euler:6", "--edge_steps", "8"], "--policy_actions"),
    (["--edge_steps", "5"], "--edge_steps"),
    (["--ablations", "scratch,distill"], "--ablations"),
    (["--fd_levels", "0.3,x"], "--fd_levels"),
    (["--ft_fraction", "0"], "--ft_fraction"),
    (["--num_eval", "300", "--batch", "200"], "--num_eval"),
    (["--selector_steps", "0"], "--selector_steps"),
])
def test_bad_flags_fail_before_training(tmp_path, flags, field):
  work = tmp_path / "w"
  with pytest.raises(ValueError, match=re.escape(field)):
    frontier.main(["--work", str(work)] + flags)
  assert not work.exists()          # nothing trained, nothing written


def test_too_many_programs_for_the_kernels_map_count_fail_before_training(tmp_path):
  limit = tmp_path / "max_map_count"
  limit.write_text("65530\n")
  frontier.check_map_count(50, str(limit))
  with pytest.raises(ValueError, match="vm.max_map_count is 65530: about 90 sampler programs of one model"):
    frontier.check_map_count(90, str(limit))
  limit.write_text("1048576\n")
  frontier.check_map_count(500, str(limit))


def test_the_default_run_fits_the_kernels_default_map_count(monkeypatch):
  # One model's programs are compiled at a time, so the default grid must not need a raised sysctl.
  asked = []
  monkeypatch.setattr(frontier, "check_map_count", lambda programs: asked.append(programs))
  args = frontier.build_parser().parse_args(["--ablations", "all"])
  frontier.validate_args(args)
  assert asked and asked[0] <= frontier.PROGRAMS_PER_DEFAULT_MAP_COUNT


def test_arms_are_timed_one_model_at_a_time_and_the_repeats_last():
  arm = frontier.Arm
  arms = [arm("dense euler 4", "dense", None, "euler", 4, source="/w/dense"),
          arm("c euler 4", "composed", None, "euler", 4, source="/w/composed"),
          arm("c ab2 4 (insert edges)", "composed", None, "ab2", 4, source="/w/composed", variant="insert edges"),
          arm("dense euler 4 (timed again)", "timing repeat", None, "euler", 4, source="/w/dense",
              repeat_of="dense euler 4"),
          arm("composed + policy", "composed + policy", None, source="/w/composed"),
          arm("AdaDiff policy (dense)", "AdaDiff policy (dense)", None, source="/w/adadiff")]
  blocks = [[a.name for a in block] for block in frontier.timing_blocks(arms)]
  assert blocks == [["dense euler 4"], ["c euler 4", "c ab2 4 (insert edges)", "composed + policy"],
                    ["AdaDiff policy (dense)"], ["dense euler 4 (timed again)"]]


def test_reuse_refuses_a_stage_made_with_other_settings(tmp_path):
  stage = tmp_path / "ppflow"
  stage.mkdir()
  (stage / "DONE").write_text('{"steps": 6}')
  frontier.check_reused(str(stage), {"steps": 6})
  with pytest.raises(ValueError, match="--reuse: .* steps=6, this run asks steps=12"):
    frontier.check_reused(str(stage), {"steps": 12})
  frontier.check_reused(str(tmp_path / "not_made_yet"), {"steps": 12})


def test_ppflow_arms_keep_coarse_tokens_within_the_width():
  # The testbed (patch 4, RGB, width 128): PPFlow-3's 8x8x3 = 192-value tokens exceed the width, so the
  # benchmark adds PPFlow-2 (4x8x3 = 96) and the composed recipe uses it; a wide model keeps PPFlow-3 only.
  c = frontier.load_config_file(frontier.TESTBED)
  sets = frontier.ppflow_stages(c)
  assert [label for label, _ in sets] == ["PPFlow-3", "PPFlow-2"]
  assert sets[1][1] == ((0.5, (4, 8)), (1.0, (4, 4)))
  assert "192 pixel values, more than the width 128" in frontier.ppflow_note(c)
  assert [d for d in map(frontier.ppflow_dir, ("PPFlow-3", "PPFlow-2"))] == ["ppflow", "ppflow2"]
  c.model.hidden_size = 192
  assert [label for label, _ in frontier.ppflow_stages(c)] == ["PPFlow-3"]
  base = c.copy_and_resolve_references()
  base.model.hidden_size = 128
  m = frontier.method_config(base, frontier.argparse.Namespace(
      cache="/tmp/x", smoke=False, selector_steps=10, policy_actions=(("ab2", 8), ("euler", 2)), policy_cost="nfe",
      policy_beta=0.3), ft_steps=5)
  assert tuple(m.compose.stages) == ((0.5, (4, 8)), (1.0, (4, 4)))
  assert tuple(m.selector.actions) == ("ab2:8", "euler:2") and m.selector.cost == "nfe" and m.selector.use_noise_stats


def test_envelope_and_interpolated_cost():
  cost, fd = np.array([1.0, 2.0, 4.0, 8.0]), np.array([2.0, 1.0, 0.5, 0.6])
  assert list(report_lib.envelope(cost, fd)) == [0, 1, 2]            # the 8-cost point is beaten by a cheaper one
  assert report_lib.cost_at(cost, fd, 0.75) == pytest.approx(2 * np.sqrt(2))   # halfway in FD, log-linear in cost
  assert report_lib.cost_at(cost, fd, 1.0) == pytest.approx(2.0)
  assert report_lib.cost_at(cost, fd, 0.4) == np.inf                  # better than every point: never reached
  assert report_lib.cost_at(cost, fd, 3.0) == 1.0                     # worse than the cheapest: its cost (a bound)


class _FakeGen:
  def network_evaluations(self, steps, method):
    return 2 * steps if method == "heun" else steps


class _FakeSampler:
  generator = _FakeGen()

  class selector:
    actions = (("euler", 2), ("ab2", 8))


def _fake_arm(name, kind, point, fd, gflops, ms, pair=None, rng=None, variant="", assign=None):
  method, steps = point if point else (None, None)
  a = frontier.Arm(name, kind, _FakeSampler(), method, steps, 1000, pair=pair, variant=variant, assign=assign)
  nfe = 5.0 if point is None else float(_FakeGen().network_evaluations(steps, method))
  a.res = dict(fd=fd, acc=0.9, nfe=nfe, gflops=gflops, ms=ms, compile_s=1.0)
  a.boot = fd + 0.05 * (rng or np.random.default_rng(0)).normal(size=50)
  iv = frontier.interval_from_resamples(fd, a.boot, lower_bound=0.0)
  a.res.update(fd_low=iv.low, fd_high=iv.high)
  a.times = [ms / 10, ms / 10 * 1.05, ms / 10 * 0.98]
  return a


def _fake_arms():
  rng = np.random.default_rng(0)
  grid = [("euler", 2), ("euler", 4), ("ab2", 8), ("heun", 8)]
  fds = {("euler", 2): 2.0, ("euler", 4): 1.0, ("ab2", 8): 0.4, ("heun", 8): 0.6}
  arms = [_fake_arm(frontier.point_name("dense", p), "dense", p, fds[p], 0.1 * p[1] * (2 if p[0] == "heun" else 1),
                    p[1], rng=rng) for p in grid]
  for p in grid:   # a method at 0.5x dense's cost and the same FD: 2x beyond dense's envelope
    arms.append(_fake_arm(frontier.point_name("PPFlow-2", p), "PPFlow-2", p, fds[p],
                          0.05 * p[1] * (2 if p[0] == "heun" else 1), p[1] / 2, pair=frontier.point_name("dense", p),
                          rng=rng))
  arms.append(_fake_arm("PPFlow-2 ab2 8 (AB2 restarts at edges)", "PPFlow-2", ("ab2", 8), 0.45, 0.4, 4,
                        pair="PPFlow-2 ab2 8", variant="AB2 restarts at edges", rng=rng))
  pol = _fake_arm(report_lib.ADADIFF, report_lib.ADADIFF, None, 0.5, 0.5, 5, rng=rng)
  pol.res["histogram"] = {"euler:2": 0.25, "ab2:8": 0.75}
  arms.append(pol)
  for name in ("best fixed action euler:2", "random, same action mix"):
    arms.append(_fake_arm(f"{report_lib.ADADIFF}: {name}", report_lib.ADADIFF + " baseline", None, 0.7, 0.5, 5,
                          pair=report_lib.ADADIFF, assign=lambda n: np.zeros(n, int), rng=rng))
  rep = _fake_arm("dense euler 2 (timed again)", "timing repeat", ("euler", 2), 2.0, 0.2, 2.1, rng=rng)
  rep.repeat_of = "dense euler 2"
  arms.append(rep)
  by = {a.name: a for a in arms}
  for a in arms:
    if a.pair:
      b = by[a.pair]
      d = frontier.interval_from_resamples(a.res["fd"] - b.res["fd"], a.boot - b.boot)
      a.res.update(diff=d.value, diff_low=d.low, diff_high=d.high)
  return arms


def test_matched_fd_speedups():
  arms = _fake_arms()
  ppflow = next(a for a in arms if a.name == "PPFlow-2 euler 4")
  point, lo, hi = report_lib.point_speedup(ppflow, arms, "gflops")
  assert point == pytest.approx(2.0) and lo <= point <= hi
  f = report_lib.frontier_speedup("PPFlow-2", arms, "gflops", 1.0)
  assert f[0] == pytest.approx(2.0) and f[3] == ""
  assert report_lib.frontier_speedup("PPFlow-2", arms, "gflops", 0.1) is None      # never reached
  assert report_lib.frontier_speedup("PPFlow-2", arms, "gflops", 5.0)[3] == "?"    # worse than both cheapest points


def test_report_from_measured_arms(tmp_path):
  # The report and plot the benchmark ends with, from fake measurements (no training).
  args = frontier.argparse.Namespace(smoke=False, ft_fraction=0.1, num_eval=1000, resamples=50, batch=100, reps=3,
                                     grid=(("ab2", 8), ("euler", 2), ("euler", 4), ("heun", 8)),
                                     ablation_grid=(("ab2", 8),), fd_levels=(0.5, 1.0))
  arms = _fake_arms()
  ctx = dict(date="2026-12-03", machine="m", flags="avx2", argv=["--reuse"], total_s=600.0, base="/b", base_step=100,
             batch=64, base_images=6400, ft_images=640, ft_steps=10, cfg=2.0, model="testbed", sel="policy",
             ppflow="PPFlow-3 ...; PPFlow-2 ...")
  secs = {"ppflow2": (60.0, False), "routed": (1200.0, True), "adadiff": (None, True)}
  md, png = tmp_path / "f.md", tmp_path / "f.png"
  floor_ref = Interval(0.2, 0.15, 0.26)
  report_lib.plot(arms, 0.3, floor_ref, str(png))
  text = report_lib.report(args, ctx, arms, 0.3, floor_ref, secs, str(md), str(png))
  assert png.stat().st_size > 0 and md.read_text() == text
  row = next(l for l in text.splitlines() if l.startswith("| PPFlow-2 | "))
  assert "2.00x" in row                                              # the frontier speed-up at FD 1.0
  assert "- PPFlow: " not in text and "- PPFlow-2: >= 1.2x beyond dense's envelope" in text
  assert "| AdaDiff policy (dense) | 5.00 |" in text and "euler:2 25%, ab2:8 75%" in text
  assert "| PPFlow-2 | 8 | AB2 restarts at edges | 8 -> 8 |" in text
  assert "dense euler 2: 2.000 vs 2.100 ms (1.050x)" in text
  assert "Whole benchmark on this machine: 30.0 min (this invocation 10.0 min + 20.0 min of training" in text
  assert "(some reused stages did not record their time)" in text
  assert "real-vs-reference (1000 real images scored like an arm) **0.200 [0.150, 0.260]**" in text


def test_quality_cache_resumes_an_interrupted_measurement_and_never_outlives_its_stage(tmp_path):
  args = frontier.argparse.Namespace(num_eval=2000, batch=200, resamples=200)
  stage = tmp_path / "routed"
  stage.mkdir()
  (stage / "DONE").write_text('{"steps": 20, "train_seconds": 61.0}')
  a = _fake_arm("DiffCR (learned ratios) heun 8", "DiffCR (learned ratios)", ("heun", 8), 0.44, 1.0, 3.0)
  a.source = str(stage)
  a.feats = np.random.default_rng(0).normal(size=(6, 4))
  a.chosen = np.array([0, 1, 1, 0, 1, 1])
  cache = str(tmp_path / "quality")
  frontier.save_quality(a, args, cache)
  b = frontier.Arm(a.name, a.kind, None, "heun", 8, source=str(stage))
  assert frontier.cached_quality(b, args, cache)
  np.testing.assert_array_equal(b.feats, a.feats)
  np.testing.assert_array_equal(b.chosen, a.chosen)
  assert b.res["fd"] == 0.44 and b.first_call is None          # timing (and compiling) still happens
  assert not frontier.cached_quality(b, frontier.argparse.Namespace(num_eval=1000, batch=200, resamples=200), cache)
  (stage / "DONE").write_text('{"steps": 20, "train_seconds": 75.0}')   # the stage was trained again
  assert not frontier.cached_quality(b, args, cache)


def test_flops_count_one_call_per_step_for_multistep_and_two_for_heun():
  # The frontier compares solvers by FLOPs: AB2 reuses the previous step's velocity (1 call per step).
  c = composed_config(tiny_config())
  gen = ComposedGenerator(c, data_lib.get_info(c.data))
  euler, ab2, heun = (flops_lib.sampling_flops(gen, None, 8, m, 2.0) for m in ("euler", "ab2", "heun"))
  assert ab2 == euler and heun == 2 * euler


# Slow: the whole protocol at tiny budgets (about half an hour on this 2-core CPU, most of it compiling).
# Run with `pytest -m slow -k frontier`.
@pytest.mark.slow
def test_smoke_writes_every_table_with_intervals(tmp_path):
  committed = os.path.join(ROOT, "experiments", "results", "frontier.md")
  before = open(committed).read() if os.path.exists(committed) else None
  r = subprocess.run([sys.executable, "-m", "experiments.frontier", "--smoke", "--ablations", "all",
                      "--work", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=3000)
  assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
  text = (tmp_path / "frontier_smoke.md").read_text()
  assert (tmp_path / "frontier_smoke.png").stat().st_size > 0
  assert "SMOKE" in text
  assert re.search(r"real-vs-reference .*\*\*" + CI + r"\*\*", text)
  for section in ("## Frontier speed-up at matched quality", "## Dense grid", "## Every method point",
                  "## Step policies", "## The sampling grid at partition edges", "## Timing spread", "## Goals"):
    assert section in text, section
  points = text.split("## Every method point")[1].split("## Step policies")[0]
  for method in ("PPFlow-3", "DiffCR (learned ratios)", "train-then-prune", "composed", "MoD fixed ratio",
                 "PPFlow-3 from scratch", "composed (one budget split over 3)"):
    row = next(l for l in points.splitlines() if l.startswith(f"| {method} "))
    assert len(re.findall(CI, row)) == 2, row      # method FD and the paired difference to dense
  dense_rows = [l for l in text.split("## Dense grid")[1].split("##")[0].splitlines() if re.match(r"\| (euler|heun|ab2) \|", l)]
  assert len(dense_rows) == 3 and all(re.search(CI, l) for l in dense_rows)
  policies = text.split("## Step policies")[1].split("##")[0]
  assert "best fixed action" in policies and "random, same action mix" in policies and "%" in policies
  edges = text.split("## The sampling grid at partition edges")[1].split("##")[0]
  assert "insert edges" in edges and "AB2 restarts at edges" in edges
  # smoke numbers never overwrite the committed results
  assert (open(committed).read() if os.path.exists(committed) else None) == before
