"""`adaflow <command> --config configs/x.py --workdir DIR [--config.a.b=value ...]`.

Config files are `ml_collections` ConfigDicts loaded with `config_flags`, so config fields can be
overridden on the command line. Commands live in `adaflow/commands/`, one module each exporting
its rows of the command table `COMMANDS` below.

`adaflow --help` lists the commands, `adaflow <command> --help` that command's flags. Bad input
(config, data, checkpoint, command line) ends with one line, `error: <message>`, and exit status 2
on every process, and so does a full or unwritable disk; a process whose collective failed because
another process died says so in one line and exits at once (not after JAX's heartbeat timeout).
`--debug` or `ADAFLOW_DEBUG=1` shows the traceback. Other exceptions are bugs and keep their traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import os
import sys

import ml_collections
from absl import app, flags, logging

from adaflow.commands import compose, convert, convert_stages, core, fid, inspect
from adaflow.commands.common import FLAGS
from adaflow.errors import is_user_error
from adaflow.parallel.distributed import initialize_runtime, lost_peer_message
from adaflow.parallel.host import is_writer
from adaflow.parallel.precision import apply_xla_cpu_defaults
from adaflow.pipelines.stages import StageStopped
from adaflow.train.checkpoint import DISK_ERRNOS, CheckpointWriteError, quiet_write_failures

# The command table: name ("eval fid" for two words) -> Command(name, fn, flags it reads).
COMMANDS = {c.name: c for module in (core, fid, convert, convert_stages, inspect, compose) for c in module.COMMANDS}
HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull", "-help", "help")
USAGE_EXIT = 2
# `--config=<this file>:<workdir>` is a run's stored config (<workdir>/config.json), for overrides without --config.
STORED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "commands", "stored_config.py")


def version() -> str:
  """The installed package's version (setup.py), via importlib.metadata."""
  try:
    return importlib.metadata.version("adaflow")
  except importlib.metadata.PackageNotFoundError:
    return "unknown (the package is not installed; `pip install -e .` in the repository)"


def overview() -> str:
  """`adaflow --help`: every command with its one-line description."""
  width = max(len(n) for n in COMMANDS) + 2
  lines = ["usage: adaflow <command> [--flag=value ...]   (adaflow <command> --help: its flags)", "",
           "commands:"]
  lines += [f"  {n.ljust(width)}{COMMANDS[n].summary}" for n in sorted(COMMANDS)]
  lines += ["", "options:", "  --help        this list", "  --version     the package version",
            "  --debug       show the traceback of user errors (also ADAFLOW_DEBUG=1)"]
  return "\n".join(lines)


def command_help(name: str) -> str:
  """`adaflow <name> --help`: usage, one line, and only the flags the command reads."""
  lines = [f"usage: adaflow {name} [--flag=value ...]", "", COMMANDS[name].summary]
  subs = sorted(n for n in COMMANDS if n.startswith(name + " "))
  if subs:
    lines += ["", "subcommands: " + ", ".join(f"adaflow {s}" for s in subs)]
  lines += ["", "flags:"]
  for f in COMMANDS[name].flags + ("debug",):
    flag = FLAGS[f]
    default = "" if flag.default is None else f" (default: {flag.default_as_str or flag.default})"
    lines.append(f"  --{f}: {flag.help}{default}")
    if f == "config":
      lines.append("      --config.<field>=value overrides one config field, e.g. --config.train.steps=100")
  return "\n".join(lines)


def suggest(word: str, choices) -> str:
  """' (did you mean `x`?)' for the nearest choice (difflib), or ''."""
  near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
  return f"; did you mean `adaflow {near[0]}`?" if near else ""


def _error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT)


def _flag_error_message(e: Exception, name: str) -> str:
  """One line for an error while parsing the command line (an unknown flag, an unknown
  `--config.a.b` field (ml_collections raises KeyError/AttributeError for those), a bad value)."""
  while isinstance(e, (KeyError, AttributeError)) and e.args and isinstance(e.args[0], Exception):
    e = e.args[0]
  if isinstance(e, flags.UnrecognizedFlagError):   # absl suggests from every command's flags
    near = difflib.get_close_matches(e.flagname, COMMANDS[name].flags + ("debug",), n=1, cutoff=0.5)
    return (f"unknown flag --{e.flagname} for `adaflow {name}`" + (f"; did you mean --{near[0]}?" if near else "")
            + f" (`adaflow {name} --help` lists its flags)")
  text = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
  if "Error whilst parsing config file" in text:   # get_config() raised; ml_collections adds its traceback
    last = text.strip().splitlines()[-1].strip()    # "ValueError: <the config file's message>"
    if STORED_CONFIG in text:
      return last.split(": ", 1)[-1]
    return f"--config: the config file's get_config() failed ({last})"
  text = " ".join(text.split())
  if isinstance(e, AttributeError) and "'get_config'" in text:
    return "--config: the file defines no get_config() returning the config (configs/*.py show the form)"
  if isinstance(e, (KeyError, AttributeError)):
    return f"--config: no such config field {text} (`adaflow <command> --help`; fields are listed in adaflow/config_defaults.py)"
  return text


def _config_file_error(name: str):
  """One line when `--config` was given but did not load into a ConfigDict, else None:
  ml_collections defers a missing or unreadable file's error to the first read of the config."""
  if "config" not in COMMANDS[name].flags or not FLAGS["config"].present:
    return None
  path, config = FLAGS["config"].config_filename, FLAGS["config"].value
  if isinstance(config, ml_collections.ConfigDict):
    return None
  try:
    config.keys()   # the deferred load error is raised here
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
    return f"--config={path}: cannot load it ({reason})"
  return (f"--config={path}: get_config() returned a {type(config).__name__}, not an ml_collections ConfigDict; "
          "build it from adaflow.config_defaults.base_config() as configs/*.py do")


def _undeclared_flag_error(name: str):
  """One line when a flag of another command was given (absl parses every command's flags, so e.g.
  `adaflow eval --num 100` would evaluate config.eval.num_samples images and ignore --num)."""
  allowed = set(COMMANDS[name].flags) | {"debug"}
  given = sorted(f for f in FLAGS if FLAGS[f].present and f not in allowed
                 and FLAGS.find_module_defining_flag(f, "").startswith("adaflow"))
  if not given:
    return None
  return (f"--{given[0]}: `adaflow {name}` has no such flag (its flags: {', '.join('--' + f for f in COMMANDS[name].flags)}; "
          "config fields are set with --config.<field>=value, e.g. --config.eval.num_samples=5000)")


def _flag_value(args, name: str):
  """The value of `--name=v` or `--name v` in `args` (the last one given), or None."""
  value = None
  for i, a in enumerate(args):
    if a.startswith(f"--{name}="):
      value = a.split("=", 1)[1]
    elif a == f"--{name}" and i + 1 < len(args):
      value = args[i + 1]
  return value


def with_stored_config(name: str, args: list) -> list:
  """`args` with `--config=<STORED_CONFIG>:<workdir>` in front when they override config fields
  (`--config.a.b=value`) and name `--workdir` but no `--config`: the overrides then change the
  run's stored config, e.g. `adaflow eval --workdir W --config.eval.num_samples=5000` or
  `adaflow train --workdir W --config.train.steps=20000` (resume for longer)."""
  if ("config" not in COMMANDS[name].flags or "workdir" not in COMMANDS[name].flags
      or not any(a.startswith("--config.") for a in args)
      or any(a == "--config" or a.startswith("--config=") for a in args)):
    return args
  workdir = _flag_value(args, "workdir")
  return args if not workdir else [f"--config={STORED_CONFIG}:{workdir}"] + args


def _user_message(e: Exception):
  """The one line for bad input or a full / unwritable disk; None for a bug (keeps its traceback)."""
  if isinstance(e, (app.UsageError, flags.Error)) or is_user_error(e):
    return str(e)
  if isinstance(e, CheckpointWriteError) or (isinstance(e, OSError) and e.errno in DISK_ERRNOS):
    # A CheckpointWriteError names the directory and the fix itself (orbax's text may span lines).
    what = (f"{e.filename}: {e.strerror}; free space there or make it writable, then rerun: checkpoints written so "
            "far are kept" if e.filename else f"{e.strerror}; then rerun")
    return " ".join(f"{what} and training resumes from the latest checkpoint".split())
  return None


def _debug(argv) -> bool:
  return "--debug" in argv or os.environ.get("ADAFLOW_DEBUG", "") not in ("", "0")


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  args = argv[1:]
  if not args or args[0] in HELP_ARGS:
    print(overview(), file=sys.stdout if args else sys.stderr)
    sys.exit(0 if args else USAGE_EXIT)
  if args[0] == "--version":
    print(f"adaflow {version()}")
    sys.exit(0)
  name = args.pop(0)
  top = sorted({n.split(" ")[0] for n in COMMANDS})
  if name not in COMMANDS:
    hint = suggest(name, top) if not name.startswith("-") else ""
    _error(f"unknown command {name!r}{hint} (commands: {', '.join(top)}; `adaflow --help` describes them)")
  if args and f"{name} {args[0]}" in COMMANDS:   # two-word commands: `eval fid`
    name = f"{name} {args.pop(0)}"
  if any(a in HELP_ARGS for a in args):
    print(command_help(name))
    sys.exit(0)
  debug = _debug(argv)
  args = with_stored_config(name, args)
  try:
    rest = FLAGS([argv[0]] + args)[1:]
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    if debug:
      raise
    _error(_flag_error_message(e, name))
  except Exception as e:  # pylint: disable=broad-except  # raised by the --config file's own code
    if debug:
      raise
    _error(f"--config: running the config file failed ({type(e).__name__}: {' '.join(str(e).split())}); "
           "--debug shows the traceback")
  config_error = _config_file_error(name) or _undeclared_flag_error(name)
  if config_error and not debug:
    _error(config_error)
  # A failing checkpoint write is one `error:` line, not orbax's and tensorstore's thread tracebacks.
  quiet = contextlib.nullcontext() if debug else quiet_write_failures()
  with quiet:
    _run(name, rest, debug)
  sys.exit(0)


def _run(name: str, rest: list, debug: bool) -> None:
  """Runs command `name`; bad input or a full / unwritable disk ends in `_error`'s one line."""
  try:
    if rest:
      subs = [n for n in COMMANDS if n.startswith(name + " ")]
      raise app.UsageError(f"unexpected argument {rest[0]!r} for `adaflow {name}`"
                           + (suggest(f"{name} {rest[0]}", subs) if subs else "; flags are written --name=value"))
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    # Before any JAX work: XLA reads its flags when the first backend starts. Then one distributed
    # start-up for every command (pods, SLURM, ADAFLOW_*): sampling and evaluation span all hosts'
    # devices just like training.
    apply_xla_cpu_defaults()
    initialize_runtime()
    COMMANDS[name]()
  except StageStopped as e:   # a signal stopped a multi-stage job: saved, exit 0 as `adaflow train` does
    if is_writer():
      print(f"[adaflow] {e}", flush=True)
  except RuntimeError as e:   # jax.errors.JaxRuntimeError: a collective failed
    message = lost_peer_message(e)
    if debug or (FLAGS.is_parsed() and FLAGS.debug) or message is None:
      raise
    # Exit at once: JAX's exit-time shutdown barrier would wait for the dead process's heartbeat
    # timeout (over a minute) and then abort this one with a C++ stack trace. Skipping it loses
    # nothing a kill would not: checkpoints are committed atomically.
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(USAGE_EXIT)
  except (app.UsageError, flags.Error, ValueError, OSError) as e:
    # Every process validates the same config and data, so each ends here the same way.
    message = _user_message(e)
    if debug or (FLAGS.is_parsed() and FLAGS.debug) or message is None:
      raise
    _error(message)


if __name__ == "__main__":
  main()
