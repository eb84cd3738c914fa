"""experiments/bench_gpu.sh --smoke (it runs `python -m experiments.bench_gpu`): the GPU benchmark end to
end on CPU with a tiny DiT (seconds on an idle machine), so the script a GPU run depends on cannot rot
unnoticed."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_gpu_smoke_writes_a_table_with_both_frameworks(tmp_path):
  out = tmp_path / "gpu.md"
  r = subprocess.run(["bash", os.path.join(ROOT, "experiments", "bench_gpu.sh"), "--smoke", "--out", str(out)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  text = out.read_text()
  assert "SMOKE RUN" in text
  for who in ("adaflow", "torch-bf16"):
    row = next(l for l in text.splitlines() if l.startswith(f"| DiT-T/2 | {who} |"))
    ips = float(row.split("|")[3])       # a number, not "failed: ..."
    assert ips > 0, row
  assert re.search(r"\| DiT-T/2 \| adaflow \| [0-9.]+ \| [0-9.]+x \|", text)
