"""`adaflow inspect ratios --workdir DIR [--out ratios.png]`: the learned DiffCR kept-token ratios.

Prints the layers x timestep-regions table of the clamped learned ratios (EMA parameters of the
latest checkpoint), the bin each snaps to at inference and the kept-token count, and saves a
heat map (matplotlib) to `--out` (default `<workdir>/ratios.png`). Any routed run: objective
routed_flow_matching, a composed one with routing, or an `adaflow compose` workdir (its final
generator); a model with timestep groups gets one table and map per group (`ratios_group<g>.png`).
"""
from __future__ import annotations

import io
import os

from absl import app
import numpy as np

from adaflow import storage
from adaflow.commands.common import FLAGS, Command, load_generator, need
from adaflow.compose.model import group_params
from adaflow.models.routing.ratios import ratio_table, snapped_table
from adaflow.models.routing.tokens import num_kept
from adaflow.parallel.host import is_writer


def format_ratio_table(table: np.ndarray, snapped: np.ndarray, boundaries, num_tokens: int) -> str:
  """table, snapped: [depth, R] -> a text table (learned ratio, [snapped bin / kept tokens])."""
  heads = [f"({boundaries[i]:.2f},{boundaries[i + 1]:.2f}]" for i in range(table.shape[1])]
  width = max(18, max(len(h) for h in heads) + 2)
  lines = ["layer " + "".join(h.rjust(width) for h in heads)]
  for layer in range(table.shape[0]):
    cells = [f"{table[layer, r]:.3f} [{snapped[layer, r]:.1f}/{num_kept(float(snapped[layer, r]), num_tokens)}]"
             for r in range(table.shape[1])]
    lines.append(f"{layer:5d} " + "".join(c.rjust(width) for c in cells))
  lines.append(f"mean learned ratio {table.mean():.3f}, mean snapped {snapped.mean():.3f} "
               f"(t = 0 noise, t = 1 data; [bin/kept tokens of {num_tokens}])")
  return "\n".join(lines)


def save_heatmap(table: np.ndarray, boundaries, path: str, title: str = "learned kept-token ratio") -> None:
  """Writes a layers x regions heat map PNG of `table` [depth, R]."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  depth, regions = table.shape
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * regions, 1.0 + 0.45 * depth))
  im = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
  ax.set_xticks(range(regions), [f"({boundaries[i]:.2f},{boundaries[i + 1]:.2f}]" for i in range(regions)],
                fontsize=7)
  ax.set_yticks(range(depth), [str(i) for i in range(depth)])
  ax.set_xlabel("timestep region (t = 0 noise, t = 1 data)")
  ax.set_ylabel("layer")
  for i in range(depth):
    for j in range(regions):
      ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=7,
              color="white" if table[i, j] < 0.6 else "black")
  fig.colorbar(im, ax=ax, label="kept ratio")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()   # rendered in memory, written through adaflow.storage (local or gs://)
  fig.savefig(buf, dpi=120, format=os.path.splitext(path)[1].lstrip(".").lower() or "png")
  plt.close(fig)
  storage.write_bytes(path, buf.getvalue())


def check_heatmap_path(path: str, setting: str) -> None:
  """A format matplotlib writes (no extension: png) and a writable folder, before the checkpoint is
  read; one ValueError naming `setting` otherwise (matplotlib's own error came after, as a traceback)."""
  from matplotlib.backend_bases import FigureCanvasBase   # here, as in save_heatmap: a slow import
  ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
  formats = FigureCanvasBase.get_supported_filetypes()
  if ext not in formats:
    raise ValueError(f"{setting} {path}: matplotlib cannot write {ext!r} images; use .png (or one of "
                     f"{', '.join(sorted(formats))})")
  storage.check_writable(storage.parent(path), setting)


def cmd_inspect_ratios():
  """Table and heat map of a routed run's learned kept-token ratios (DiffCR)."""
  workdir = need("workdir")
  check_heatmap_path(FLAGS.out or os.path.join(workdir, "ratios.png"), "--out" if FLAGS.out else "--workdir")
  generator, params, config, info, _, step = load_generator(workdir, FLAGS.config)
  if not getattr(generator, "routed", False):
    raise ValueError(f"{workdir}: its model has no DiffCR routing (config.objective {config.objective!r}); `inspect "
                     "ratios` needs a routed run: objective routed_flow_matching, or composed / an `adaflow compose` "
                     "workdir with compose.routing")
  spec = generator.spec.routing
  p = int(config.model.patch_size)   # the finest stage's tokens (a PPFlow model's coarse stages keep fewer)
  n = (info.image_shape[0] // p) * (info.image_shape[1] // p)
  num_groups = generator.spec.num_groups if generator.grouped else 1
  if not is_writer():   # every process read the same parameters; one prints and writes
    return
  for g in range(num_groups):
    table = ratio_table(group_params(params, generator.spec, g), spec)
    snapped = snapped_table(table, spec)
    which, suffix = "", ""
    if generator.grouped:   # each timestep group of a pruned model learned its own ratios
      edges = generator.spec.edges
      which, suffix = f", timestep group {g} (t in [{edges[g]:.3f}, {edges[g + 1]:.3f}))", f"_group{g}"
    print(f"{workdir} step {step}{which}: kept-token ratio per layer x timestep region")
    print(format_ratio_table(table, snapped, spec.boundaries, n))
    base, ext = os.path.splitext(FLAGS.out or os.path.join(workdir, "ratios.png"))
    out = base + suffix + (ext or ".png")
    save_heatmap(table, spec.boundaries, out, title=f"learned kept-token ratio, step {step}{which}")
    print(f"wrote {out}")


def cmd_inspect():
  """Inspect a trained run: `adaflow inspect ratios`."""
  raise app.UsageError("`adaflow inspect` needs a subject: `adaflow inspect ratios --workdir DIR`")


COMMANDS = (Command("inspect", cmd_inspect, ()),
            Command("inspect ratios", cmd_inspect_ratios, ("workdir", "config", "out")))
