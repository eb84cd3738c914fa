"""`adaflow convert --from <state_dict.pt|.safetensors> --format {dit,diffusers} --config <cfg> --out <dir>`.

Turns a PyTorch DiT checkpoint (original facebookresearch/DiT layout or diffusers
`DiTTransformer2DModel`) into an adaflow orbax checkpoint (step 0) in `--out`, usable with
`adaflow sample|eval --workdir <dir>` and `adaflow train --init <dir>`. `--config` must describe
the same network (size, patch, image size/channels via data, classes, learn_sigma,
time_freq_shift: 0 for dit, 1 for diffusers); every disagreement is reported in one error.
"""
from __future__ import annotations

from absl import app, flags

from adaflow.commands.common import FLAGS, Command, need
from adaflow.convert import convert_file

flags.DEFINE_string("from", None, "`convert`: PyTorch checkpoint to import (.pt/.pth/.bin state dict or .safetensors).")
flags.DEFINE_enum("format", "dit", ["dit", "diffusers"],
                  "`convert`: key layout of --from: original facebookresearch/DiT (`dit`) or diffusers DiTTransformer2DModel.")


def cmd_convert():
  """Import a PyTorch DiT checkpoint (DiT or diffusers layout) as an adaflow workdir."""
  src = FLAGS["from"].value
  if src is None:
    raise app.UsageError("--from is required for `convert` (the PyTorch checkpoint file)")
  if FLAGS.out is None:
    raise app.UsageError("--out is required for `convert` (the adaflow workdir to create)")
  convert_file(src, FLAGS.format, need("config"), FLAGS.out)


COMMANDS = (Command("convert", cmd_convert, ("from", "format", "config", "out")),)
