"""Errors that mean "the input is wrong", as opposed to a bug.

`UserError` is a `ValueError` (so every `pytest.raises(ValueError)` keeps holding); the CLI prints
it as one line, `error: <message>`, and exits 2. A plain `ValueError` raised by adaflow's own
code is treated the same way (the project raises ValueError only for bad input); one raised
inside a library (jax, numpy, ...) is a bug and keeps its traceback (see `is_user_error`).
"""
from __future__ import annotations

import os


class UserError(ValueError):
  """Bad configuration, data, checkpoint or command line; the message names the field and the fix."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def is_user_error(exc: BaseException) -> bool:
  """True for a UserError, or a ValueError whose innermost frame is adaflow's own code."""
  if isinstance(exc, UserError):
    return True
  if not isinstance(exc, ValueError):
    return False
  tb = exc.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  origin = os.path.abspath(tb.tb_frame.f_code.co_filename)
  return origin.startswith(_PACKAGE_DIR + os.sep)
