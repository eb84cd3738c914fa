"""CLI commands, one module each. A module defines its absl flags at import time and registers
its entry point with `adaflow.commands.registry.command`. Add a command by adding a module here
and one import line below."""
from adaflow.commands import core  # noqa: F401  train, sample, eval
from adaflow.commands import convert  # noqa: F401  convert (PyTorch DiT import; uses core's --out)
from adaflow.commands import adadiff  # noqa: F401  sample --selector (AdaDiff)
from adaflow.commands import convert_stages  # noqa: F401  convert-stages (dense DiT -> PPFlow)
from adaflow.commands import fid  # noqa: F401  fid / eval fid (FID-50K protocol)
from adaflow.commands import dq  # noqa: F401  --tokenizer, DQ coarse/fine maps in `sample`
from adaflow.commands import inspect  # noqa: F401  inspect ratios (DiffCR)
from adaflow.commands import compose  # noqa: F401  compose (all methods in one model: adaflow/compose)
