"""experiments/loss_overlay.py (issue #28 item 4): two versions of the code train the same config
from the same seed in fresh processes; the same code must give the same losses at every logged step."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_same_code_overlays_exactly(tmp_path):
  """--ref HEAD against this checkout (HEAD in a clean clone): 4 logged steps of the crops testbed's
  smoke model, all identical; the report and the figure are written."""
  out, png = tmp_path / "overlay.md", tmp_path / "overlay.png"
  r = subprocess.run([sys.executable, "-m", "experiments.loss_overlay", "--ref", "HEAD", "--config",
                      "testbed_crops32:smoke", "--steps", "4", "--log_every", "1", "--dtypes", "float32",
                      "--out", str(out), "--png", str(png)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  row = [ln for ln in out.read_text().splitlines() if ln.startswith("| float32 |")]
  assert row and re.match(r"\| float32 \| 4 \| 4 \| 0 \| 0 \|", row[0]), row
  assert png.stat().st_size > 0
