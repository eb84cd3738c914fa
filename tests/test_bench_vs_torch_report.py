"""experiments/bench_vs_torch.py's report from fake measurements: the script runs for tens of minutes
before it writes anything, so its report must not be the first thing to fail (it once did, on a
changed helper signature)."""
import argparse

from experiments import bench_vs_torch as bench


def test_report_from_fake_measurements(tmp_path, monkeypatch):
  ada = bench.ada_label()
  mib = 2 ** 20
  times = {ada: {"forward": [1.0, 1.2], "train": [4.0, 4.4]},
           "torch eager": {"forward": [2.0, 2.0], "train": [8.0, 8.0]},
           "torch bf16": {"forward": [1.0, 1.0], "train": [2.0, 2.0]}}
  mem = {ada: {"train": {"total": 2000 * mib, "temp": 1600 * mib, "args": 400 * mib},
               "forward": {"total": 300 * mib, "temp": 200 * mib, "args": 100 * mib}},
         "torch eager": {"train": 4000 * mib, "forward": 2000 * mib},
         "torch bf16": {"error": "killed"}}
  results = {"S": {"times": times, "mem": mem, "params": (32.5e6, 35.2e6)}}
  a = argparse.Namespace(sizes="S", batch=32, reps=2, modes="eager,bf16", profile=False, note="a note.", dtype="auto",
                         out=str(tmp_path / "vs_torch.md"), load_start=(0.1, 0.2, 0.3))
  bench.write_report(a, results, ["DiT-S/2 torch compile: failed (x)"], {}, 60.0)
  text = (tmp_path / "vs_torch.md").read_text()
  assert "CPU flags (matmul-relevant):" in text and "adaflow compute dtype: compute dtype" in text
  row = next(l for l in text.splitlines() if l.startswith("| DiT-S/2 | torch eager"))
  # adaflow: 32 / 1.1 s forward, 32 / 4.2 s train; torch eager 32 / 2 s, 32 / 8 s
  assert "| 1.82x | 1.90x | 0.50x |" in row, row
  assert "- DiT-S/2 vs torch bf16: 0.48x -> BELOW the bar" in text
  assert "a note." in text and "DiT-S/2 torch compile: failed (x)" in text
  # The command line reproduces the run: every option, and XLA_FLAGS when it was set.
  assert f"--dtype auto --out {tmp_path / 'vs_torch.md'} --note 'a note.'`" in text
  monkeypatch.setenv("XLA_FLAGS", "--xla_a=1 --xla_b=2")     # read by command_line only (no backend starts)
  assert bench.command_line(a).startswith("XLA_FLAGS='--xla_a=1 --xla_b=2' python -m experiments.bench_vs_torch")


def test_report_with_two_adaflow_dtypes(tmp_path):
  """`--dtype auto,bfloat16`: both adaflow contenders in one run, ratios against the first."""
  first, second = bench.ada_labels("auto,bfloat16")
  assert "model.dtype=auto: " in first and "model.dtype=bfloat16: bfloat16 compute" in second
  mib = 2 ** 20
  xla = lambda total: {"train": {"total": total * mib, "temp": total * mib // 2, "args": total * mib // 4},
                       "forward": {"total": 300 * mib, "temp": 200 * mib, "args": 100 * mib}}
  times = {first: {"forward": [1.0, 1.0], "train": [4.0, 4.0]},
           second: {"forward": [2.0, 2.0], "train": [6.0, 6.0]},
           "torch eager": {"forward": [2.0, 2.0], "train": [8.0, 8.0]}}
  mem = {first: xla(2000), second: xla(1000), "torch eager": {"train": 4000 * mib, "forward": 2000 * mib}}
  a = argparse.Namespace(sizes="S", batch=32, reps=2, modes="eager", profile=False, note="", dtype="auto,bfloat16",
                         out=str(tmp_path / "vs_torch.md"), load_start=(0.1, 0.2, 0.3))
  bench.write_report(a, {"S": {"times": times, "mem": mem, "params": (32.5e6, 35.2e6)}}, [], {}, 60.0)
  text = (tmp_path / "vs_torch.md").read_text()
  row = next(l for l in text.splitlines() if l.startswith(f"| DiT-S/2 | {second}"))
  assert "| 2.00x | 1.50x | 2.00x |" in row and "| 1000 MiB |" in row, row
  assert f"- DiT-S/2 {second}: XLA buffers 1000 MiB total" in text
  assert "--dtype auto,bfloat16 --out" in text
  assert "- DiT-S/2 vs torch eager: 2.00x -> meets the bar" in text and f"vs {second}:" not in text
  assert text.startswith("# adaflow vs PyTorch (diffusers DiTTransformer2DModel): DiT-S/2\n")   # the sizes that ran
