"""Times the test suite: the README's test command (or any pytest arguments) on the code of one or
more git revisions, one run after the other on this machine (issue #28's test-time goal).

Each revision is exported with `git archive` into a temporary directory and its tests run from there
with that directory first on PYTHONPATH (so the tests, their CLI subprocesses and multi-process
children import that revision's package); `checkout` means this working tree as it is, uncommitted
changes included. Per run: pytest's summary, wall seconds, the CPU seconds of pytest and every process
it started (user + system, `resource.getrusage(RUSAGE_CHILDREN)`), the load average before, and the
slowest tests (pytest's `--durations`). Compare runs of one invocation only: the same suite on this
kind of shared machine has taken 40% more CPU seconds from one hour to the next.

  python -m experiments.time_tests --revs ebdda33,checkout --append experiments/results/test_suite_time.md
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time

from experiments.common import ROOT, export_revision, git, machine_line, utc_now

# pytest's --durations lines: "236.01s call     tests/test_x.py::test_name[param]"
_DURATION = re.compile(r"^\s*([0-9.]+)s\s+(call|setup|teardown)\s+(\S+)")
_SUMMARY = re.compile(r"=*\s*(\d+ (passed|failed|error).*) in [0-9.]+s")


def revision_name(rev: str) -> str:
  if rev == "checkout":
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"checkout ({git('rev-parse', '--short', 'HEAD')}{dirty})"
  return git("rev-parse", "--short", rev)


def run_tests(code_root: str, pytest_args: list[str], log_path: str) -> dict:
  """Runs `python -m pytest ARGS` in `code_root` -> wall / CPU seconds, summary, durations."""
  env = dict(os.environ, PYTHONPATH=code_root, PYTHONUNBUFFERED="1")
  load = os.getloadavg()
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=code_root, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  text = open(log_path).read()
  summary = [m.group(1) for m in map(_SUMMARY.search, text.splitlines()) if m]
  durations = {}
  for line in text.splitlines():
    m = _DURATION.match(line)
    if m:   # a test's setup, call and teardown add up
      durations[m.group(3)] = durations.get(m.group(3), 0.0) + float(m.group(1))
  return {"exit": proc.returncode, "wall": wall, "load": load, "summary": summary[-1] if summary else "no summary line",
          "user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime,
          "durations": durations}


def report(args, revisions: list[str], names: list[str], runs: list[dict], header: str, started: str) -> str:
  """Markdown: one row per run (`names[i]` labels `runs[i]`), then the slowest tests per run."""
  command = f"python -m pytest {args.pytest}"
  each = "one run each, back to back" if args.rounds == 1 else f"{args.rounds} runs each, the revisions in turn"
  lines = [f"## {started[:10]}: test time, {' vs '.join(revisions)}", "",
           f"- {header}; started {started}.",
           f"- Command per revision: `{command}` (a git revision from a tree exported with `git archive`, `checkout`"
           f" in this working tree), {each};"
           f" measured by `python -m experiments.time_tests {' '.join(shlex.quote(a) for a in sys.argv[1:])}`.",
           "", "| revision | load 1/5/15 min before | result | exit | wall | user CPU s | system CPU s |",
           "|---|---|---|---:|---:|---:|---:|"]
  for name, r in zip(names, runs):
    load = " / ".join(f"{x:.1f}" for x in r["load"])
    minutes, seconds = divmod(round(r["wall"]), 60)
    lines.append(f"| {name} | {load} | {r['summary']} | {r['exit']} | {minutes} min {seconds} s"
                 f" | {r['user']:,.0f} | {r['system']:,.0f} |")
  slowest = sorted(runs[-1]["durations"].items(), key=lambda kv: -kv[1])[:args.top]
  if slowest:
    lines += ["", f"The slowest tests (seconds, setup + call + teardown from `--durations`), in the order of {names[-1]}:", "",
              "| test | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for test, _ in slowest:
      cells = [f"{r['durations'][test]:.1f}" if test in r["durations"] else "-" for r in runs]
      lines.append(f"| `{test}` | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--revs", default="checkout", help="comma-separated git revisions; `checkout` is this working tree")
  p.add_argument("--pytest", default="-q -n 2", help="pytest arguments (default: the README's test command's)")
  p.add_argument("--top", type=int, default=25, help="how many of the slowest tests to list")
  p.add_argument("--rounds", type=int, default=1,
                 help="run the revisions in turn this many times (A B A B ...): drift of the machine's speed "
                      "then shows in the rounds instead of favouring one revision")
  p.add_argument("--append", default=None, help="markdown file to append the section to")
  args = p.parse_args()
  revs = [r for r in args.revs.split(",") if r]
  names = [revision_name(r) for r in revs]
  header, started = machine_line(), utc_now()
  pytest_args = shlex.split(args.pytest) + [f"--durations={max(args.top, 1) * 3}"]
  runs, run_names = [], []
  with tempfile.TemporaryDirectory(prefix="adaflow-test-time-") as tmp:
    roots = {}
    for i, rev in enumerate(revs):
      roots[rev] = ROOT
      if rev != "checkout":
        roots[rev] = os.path.join(tmp, f"code_{i}")
        os.makedirs(roots[rev])
        export_revision(rev, roots[rev])
    for round_index in range(args.rounds):
      for rev, name in zip(revs, names):
        label = name if args.rounds == 1 else f"{name}, round {round_index + 1}"
        log_path = os.path.join(tmp, f"pytest_{len(runs)}.log")
        print(f"[time_tests] {label}: python -m pytest {' '.join(pytest_args)} ...", flush=True)
        runs.append(run_tests(roots[rev], pytest_args, log_path))
        run_names.append(label)
        r = runs[-1]
        print(f"[time_tests]   {r['summary']}, exit {r['exit']}, {r['wall']:.0f} s wall, {r['user']:.0f} user CPU s", flush=True)
        if r["exit"] != 0:
          print(open(log_path).read()[-4000:], flush=True)
  text = report(args, names, run_names, runs, header, started)
  print(text)
  if args.append:
    with open(args.append, "a") as f:
      f.write("\n" + text)
    print(f"appended to {args.append}")
  if any(r["exit"] != 0 for r in runs):
    raise SystemExit("a test run failed (its output is above)")


if __name__ == "__main__":
  main()
