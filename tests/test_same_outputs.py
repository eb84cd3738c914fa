"""experiments/same_outputs.py (issue #26 item 8): which outputs of two runs of the CLI chain it
calls the same, and which steps it runs for `--only`."""
import json

from experiments import same_outputs


def _write(root, rel, content):
  path = root / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)


def test_timings_and_paths_are_ignored_values_and_bytes_are_not(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for root, secs in ((a, 1.5), (b, 9.0)):
    _write(root, "dense/eval.json", json.dumps({"fd": 0.5, "generate_seconds": secs, "images_per_second": 1 / secs,
                                                "workdir": f"{root}/dense"}))
    _write(root, "dense/metrics.jsonl", json.dumps({"step": 5, "time": secs, "loss": 1.25}) + "\n")
    _write(root, "dense/config.json", json.dumps({"model": {"time_scale": 1000.0}}))
    _write(root, "dense/checkpoints/5/x.json", json.dumps({"random": secs}))     # skipped folder
    _write(root, "log_00_dense.txt", f"took {secs}")                            # logs are not outputs
  n, diffs = same_outputs.compare(str(a), str(b))
  assert (n, diffs) == (3, [])

  _write(b, "dense/metrics.jsonl", json.dumps({"step": 5, "time": 1.0, "loss": 1.2500001}) + "\n")
  _write(b, "dense/config.json", json.dumps({"model": {"time_scale": 1.0}}))   # a config field, not a timing
  _write(a, "dense.png", b"\x89PNG-a")
  _write(b, "dense.png", b"\x89PNG-b")
  _write(b, "extra/eval.json", "{}")
  n, diffs = same_outputs.compare(str(a), str(b))
  assert n == 5
  assert diffs == ["extra/eval.json: only in the second revision's output", "dense.png: bytes differ",
                   "dense/config.json: values differ", "dense/metrics.jsonl: values differ"]


def test_only_adds_what_a_step_needs_and_the_samples_of_what_runs():
  assert same_outputs.selected_steps({"dqt"}) == {"dqvae", "dqt", "sample_dq"}
  assert same_outputs.selected_steps({"sample_selector"}) == {"dense", "adadiff", "sample_selector", "sample_dense"}
  assert same_outputs.selected_steps({"routed"}) == {"routed"}
  assert same_outputs.selected_steps(None) == {name for name, _, _ in same_outputs.chain("o")}
