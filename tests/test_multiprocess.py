"""Two real JAX processes on this machine (CPU, 2 devices each, loopback coordinator, gloo
collectives) train exactly like one process with 4 simulated devices."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mp_worker.py")
TIMEOUT = 240  # seconds per worker; a hang fails the test instead of hanging CI


def record(fault: str, observed: str) -> None:
  """Appends what a fault test observed to $ADAFLOW_RELIABILITY_LOG (experiments/reliability_report.py)."""
  path = os.environ.get("ADAFLOW_RELIABILITY_LOG")
  if path:
    with open(path, "a") as f:
      f.write(json.dumps({"fault": fault, "observed": observed}) + "\n")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["PYTHONUNBUFFERED"] = "1"
  return env


def start(spec):
  return subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=_env())


def finish(proc, timeout=TIMEOUT):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"worker timed out after {timeout}s; stderr tail:\n{err[-3000:]}")
  assert proc.returncode == 0, err[-4000:]
  return json.loads(out.strip().splitlines()[-1]), err


def run_processes(specs, timeout=TIMEOUT):
  procs = [start(s) for s in specs]
  try:
    return [finish(p, timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def two_process_specs(workdir, overrides, devices=2):
  coord = f"127.0.0.1:{free_port()}"
  return [{"devices": devices, "distributed": {"coordinator": coord, "num_processes": 2, "process_id": i},
           "runs": [{"workdir": str(workdir), "overrides": overrides}]} for i in range(2)]


OVER = {"train.steps": 10, "train.ckpt_every": 5, "train.batch_size": 8, "mesh.data": -1}


def method_runs(root):
  """The runs of one worker: the tiny DiT (OVER), a DQ-VAE tokenizer, and an AdaDiff step policy
  over the DiT just trained: the two objectives that train outside the composed model."""
  short = {"train.steps": 4, "train.ckpt_every": 4, "train.batch_size": 8, "mesh.data": -1}
  return [{"workdir": str(root / "dit"), "overrides": OVER},
          {"workdir": str(root / "dqvae"), "config": "dqvae", "overrides": short},
          {"workdir": str(root / "policy"), "config": "selector", "generator": str(root / "dit"), "overrides": short}]


def test_two_processes_match_single_process_four_devices(tmp_path):
  """The tiny DiT, then a DQ-VAE and a step policy (method_runs), each trained by 2 processes x 2
  devices and by 1 process x 4 devices: the same losses and parameters."""
  coord = f"127.0.0.1:{free_port()}"
  (p0, err0), (p1, err1) = run_processes([
      {"devices": 2, "distributed": {"coordinator": coord, "num_processes": 2, "process_id": i},
       "runs": method_runs(tmp_path / "multi")} for i in range(2)])
  (single, _), = run_processes([{"devices": 4, "runs": method_runs(tmp_path / "single")}])
  assert (p0["process_count"], p0["devices"], p1["process_index"]) == (2, 4, 1)
  assert single["process_count"] == 1 and single["devices"] == 4
  multi_losses, single_losses = p0["runs"][0]["losses"], single["runs"][0]["losses"]
  assert p0["runs"][0]["steps"] == list(range(1, 11))
  # Same global batch in the same order, same keys; only the cross-device reduction is carried out
  # by gloo between processes instead of in-process, so allow float32 reduction-order noise.
  for name, multi, one, other in zip(("dit", "dqvae", "policy"), p0["runs"], single["runs"], p1["runs"]):
    assert multi["steps"] == one["steps"] == list(range(1, len(one["steps"]) + 1)), name
    np.testing.assert_allclose(multi["losses"], one["losses"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(multi["param_sum"], one["param_sum"], rtol=1e-5, err_msg=name)
    assert multi["param_sum"] == other["param_sum"], name     # the processes agree exactly
  # Only process 0 writes logs: one metrics row per step (no duplicates from process 1).
  with open(tmp_path / "multi" / "dit" / "metrics.jsonl") as f:
    assert len([json.loads(l) for l in f if '"train"' in l]) == 10
  # orbax coordinated one checkpoint per save step, both processes' shards included.
  assert sorted(os.listdir(tmp_path / "multi" / "dit" / "checkpoints")) == ["10", "5"]
  diff = float(np.max(np.abs(np.asarray(multi_losses) - np.asarray(single_losses)) / np.abs(single_losses)))
  record("2 processes x 2 CPU devices (loopback coordinator, gloo) vs 1 process x 4 devices",
         f"10-step DiT losses match within rtol 1e-5 (max relative difference {diff:.2e}), and so do a DQ-VAE's and a "
         f"step policy's 4 steps; one metrics row per step (process 0 only); orbax wrote checkpoints 5 and 10 from "
         f"both processes")


@pytest.mark.slow
def test_two_processes_resume_and_signal_on_one_process(tmp_path):
  """SIGTERM to process 1 only: both stop at the same step boundary (the stop flag is all-gathered),
  one checkpoint is written, and resuming with 2 processes gives the uninterrupted losses."""
  over = dict(OVER, **{"train.steps": 400, "train.ckpt_every": 1000})
  specs = two_process_specs(tmp_path / "w", over)
  procs = [start(s) for s in specs]
  try:
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    (p0, err0), (p1, err1) = [finish(p) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  stopped = p0["runs"][0]["final_step"]
  assert p1["runs"][0]["final_step"] == stopped and 5 <= stopped < 400
  assert "signal on another process" in err0 and "SIGTERM" in err1
  assert os.listdir(tmp_path / "w" / "checkpoints") == [str(stopped)]
  assert not (tmp_path / "w" / "train_complete.json").exists()   # a preemption stop is not the end
  resume = dict(over, **{"train.steps": stopped + 5})
  specs = two_process_specs(tmp_path / "w", resume)
  (r0, _), _ = run_processes(specs)
  specs = two_process_specs(tmp_path / "ref", resume)
  (ref, _), _ = run_processes(specs)
  assert r0["runs"][0]["losses"] == ref["runs"][0]["losses"]
  record("SIGTERM to one of 2 processes",
         f"both processes stopped after the same step {stopped} (flag all-gathered), one checkpoint, exit 0; "
         f"2-process resume bit-identical to an uninterrupted 2-process run")


# ---- every command on two processes ------------------------------------------------------------

ROOT = os.path.dirname(HERE)
CLI_CONFIG = os.path.join(HERE, "tiny_cli_config.py")


def run_cli(args, processes: int, devices_per_process: int, cwd, timeout=TIMEOUT):
  """`python -m adaflow.cli <args>` as `processes` JAX processes (loopback coordinator, the
  ADAFLOW_* start-up the CLI does for every command); returns each process's (stdout, stderr)."""
  coord = f"127.0.0.1:{free_port()}"
  procs = []
  for i in range(processes):
    env = _env()
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process))
    if processes > 1:
      env.update(ADAFLOW_COORDINATOR=coord, ADAFLOW_NUM_PROCESSES=str(processes), ADAFLOW_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, "-m", "adaflow.cli"] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=str(cwd)))
  outs = []
  try:
    for p in procs:
      try:
        out, err = p.communicate(timeout=timeout)
      except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"adaflow {' '.join(args[:2])} timed out after {timeout}s; stderr tail:\n{err[-3000:]}")
      assert p.returncode == 0, f"adaflow {' '.join(args[:2])} failed:\n{err[-4000:]}"
      outs.append((out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def _last_json(text: str) -> dict:
  start = text.rindex("\n{") + 1 if "\n{" in text else text.index("{")
  return json.loads(text[start:])


def _png(path) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.open(path))


def test_every_command_on_two_processes_matches_one_process(tmp_path):
  """`adaflow train` with final samples and evaluation on, then `sample`, `eval` and `eval fid`
  (random Inception weights written here) on 2 processes x 1 CPU device; then `sample`, `eval` and
  `eval fid` of a copy of the trained run on 1 process x 2 devices: the same mesh and parameters,
  so the same images and numbers. (Training itself on 2 processes against 1:
  test_two_processes_match_single_process_four_devices and the compose test below.)"""
  from adaflow.eval import inception as inception_lib
  weights = tmp_path / "inception_random.npz"
  np.savez(str(weights), **inception_lib.params_to_state_dict(inception_lib.init_random_params(3)))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  w = tmp_path / "two"
  run_cli(["train", f"--config={CLI_CONFIG}", f"--workdir={w}"], 2, 1, cwd)
  assert (w / "samples" / "step_0000004.png").exists() and (w / "eval.json").exists()
  assert json.loads((w / "train_complete.json").read_text())["step"] == 4    # the watcher's signal
  assert (w / "metrics.jsonl").read_text().count('"train"') == 4             # process 0 logs, once
  # The 1-process commands get a copy of the checkpoints, not the FID feature shards written above.
  one = tmp_path / "one"
  shutil.copytree(w / "checkpoints", one / "checkpoints")
  shutil.copy(w / "config.json", one / "config.json")
  runs = {}
  for name, procs, devs in (("two", 2, 1), ("one", 1, 2)):
    common = [f"--config={CLI_CONFIG}", f"--workdir={tmp_path / name}"]
    run_cli(["sample"] + common + ["--num=12", f"--out={tmp_path / name / 'cli.png'}"], procs, devs, cwd)
    ev = run_cli(["eval"] + common, procs, devs, cwd)
    fid = run_cli(["eval", "fid"] + common + ["--num=24", "--ref=dataset", "--fid_ref_num=32", f"--inception={weights}",
                                              "--fid_input_size=75", "--fid_batch=8", "--fid_gen_batch=8",
                                              "--fid_shard=16"], procs, devs, cwd)
    # Only process 0 prints results, progress bars included, and writes files.
    assert all("{" not in out and "[eval]" not in out for out, _ in ev[1:] + fid[1:])
    assert "inception:" in fid[0][1] and all("inception:" not in err for _, err in fid[1:])
    runs[name] = dict(eval=_last_json(ev[0][0]), fid=_last_json(fid[0][0]), sample=_png(tmp_path / name / "cli.png"))
  two, one = runs["two"], runs["one"]
  np.testing.assert_array_equal(one["sample"], two["sample"])
  for key in ("fd", "class_acc"):
    np.testing.assert_allclose(two["eval"][key], one["eval"][key], rtol=1e-6)
  train_eval = json.loads((w / "eval.json").read_text())
  np.testing.assert_allclose(two["eval"]["fd"], train_eval["fd"], rtol=1e-6)  # same params, same seed
  np.testing.assert_allclose(two["fid"]["fid"], one["fid"]["fid"], rtol=1e-6)
  assert two["fid"]["num"] == one["fid"]["num"] == 24
  # Nothing was written into the working directory.
  assert os.listdir(cwd) == []
  record("every command (train with final samples + eval, sample, eval, eval fid) on 2 processes",
         f"exit 0 on both; sample, eval and eval fid of the trained run on 1 process x 2 devices give the same "
         f"images (array-equal), FD {two['eval']['fd']:.6f} vs {one['eval']['fd']:.6f}, FID "
         f"{two['fid']['fid']:.6f} vs {one['fid']['fid']:.6f}")


def test_compose_on_two_processes_matches_one_process(tmp_path):
  """`adaflow compose` (dense -> routing fine-tune, then the composed sampler's evaluation, which
  reads back the recipe's summary and samples with the routed ratios read from the params) on 2
  processes x 1 CPU device; then the same command on a copy of the finished run on 1 process x 2
  devices, which skips every finished stage and evaluates the same parameters: the same FD.
  Process 1 once read composed.json before process 0 had written it and died (a barrier now orders
  them)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  evals = {}
  for name, procs, devs in (("two", 2, 1), ("one", 1, 2)):
    w = tmp_path / name
    if name == "one":
      shutil.copytree(tmp_path / "two", w, ignore=shutil.ignore_patterns("eval.json", "composed.json"))
    outs = run_cli(["compose", f"--config={CLI_CONFIG}", f"--workdir={w}", "--config.compose.routing=True",
                    "--config.compose.dense_steps=2", "--config.compose.routing_steps=2",
                    "--config.eval.num_samples=16"], procs, devs, cwd)
    assert all("composed eval:" not in out for out, _ in outs[1:])      # only process 0 prints / writes
    assert (w / "routed" / "DONE").exists() and json.loads((w / "composed.json").read_text())["stages"]["routed"]
    if name == "one":   # finished stages are skipped on a rerun
      assert "dense: already finished" in outs[0][0] + outs[0][1], outs[0][1][-2000:]
    evals[name] = json.loads((w / "eval.json").read_text())
  two, one = evals["two"], evals["one"]
  assert two["methods"] == one["methods"] == ["routing"] and two["num"] == one["num"] == 16
  assert two["flops_per_image"] == one["flops_per_image"]
  np.testing.assert_allclose(two["fd"], one["fd"], rtol=1e-6)
  assert os.listdir(cwd) == []


# Process 0 fails while training the evaluation's feature network (its data cannot be read).
CLASSIFIER_FAILS_ON_PROCESS_0 = """import sys
from adaflow.parallel.distributed import initialize_runtime
assert initialize_runtime(timeout_s=60)
import jax
from adaflow import data as data_lib
from adaflow.eval import classifier
from conftest import tiny_config
def unreadable(*a, **k):
  raise ValueError("data.path: cannot read the images")
data_lib.load_arrays = unreadable
try:
  classifier.get_classifier(tiny_config().data, sys.argv[1], steps=2)
except ValueError as e:
  print(f"process {jax.process_index()}: {e}")
"""


def test_feature_network_failure_on_process_0_stops_every_process(tmp_path):
  """Only process 0 trains the feature network (the others receive it): when it fails, the others
  must stop too, not wait for the network forever."""
  coord = f"127.0.0.1:{free_port()}"
  procs = []
  for i in range(2):
    env = _env()
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", PYTHONPATH=HERE + os.pathsep + ROOT,
               ADAFLOW_COORDINATOR=coord, ADAFLOW_NUM_PROCESSES="2", ADAFLOW_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, "-c", CLASSIFIER_FAILS_ON_PROCESS_0, str(tmp_path / "cache")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=120)
      assert p.returncode == 0, err[-3000:]
      outs.append(out.strip().splitlines()[-1])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert outs == ["process 0: data.path: cannot read the images",
                  "process 1: process 0 could not train the evaluation's classifier (its error says why)"]


def test_a_second_job_in_a_workdir_in_use_stops_and_a_killed_process_stops_the_others(tmp_path):
  """kill -9 of process 1 while training: process 0's next collective fails. It must say so in one
  `error:` line and exit 2 at once, not wait out JAX's heartbeat timeout (100 s) and then abort with a
  C++ stack trace (exit 134, what it did before). Before the kill, the same 2-process job started again
  in the workdir stops on both processes (the lock). No checkpoint falls in the window: a process
  waiting in orbax's save barrier learns of the death only from that timeout, and JAX aborts it
  itself then (its own message says another task died)."""
  coord = f"127.0.0.1:{free_port()}"
  w = tmp_path / "w"
  args = ["train", f"--config={CLI_CONFIG}", f"--workdir={w}", "--config.train.steps=100000",
          "--config.train.ckpt_every=100000", "--config.eval.at_end=False", "--config.train.final_samples=False"]
  def launch(coord):
    out = []
    for i in range(2):
      env = _env()
      env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", ADAFLOW_COORDINATOR=coord,
                 ADAFLOW_NUM_PROCESSES="2", ADAFLOW_PROCESS_ID=str(i))
      out.append(subprocess.Popen([sys.executable, "-m", "adaflow.cli"] + args, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path)))
    return out
  procs = launch(coord)
  try:
    metrics = w / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 3):
      time.sleep(0.2)
    # The same job started again while this one trains: both of its processes stop, before compiling.
    again = launch(f"127.0.0.1:{free_port()}")
    errs = [p.communicate(timeout=TIMEOUT)[1] for p in again]
    assert [p.returncode for p in again] == [2, 2], errs
    assert "is in use by another run (pid " in errs[0] and "is in use by another run (process 0's" in errs[1], errs
    procs[1].kill()
    _, err = procs[0].communicate(timeout=TIMEOUT)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  last = err.strip().splitlines()[-1]
  assert procs[0].returncode == 2, err[-3000:]
  assert last.startswith("error: process 0 of 2 lost another process in a collective"), last
  assert "restart all 2 processes" in last and "Traceback" not in err and "Check failure" not in err
  record("kill -9 of one of 2 training processes (between checkpoints)",
         "the other printed one error line and exited 2 at its next collective")
