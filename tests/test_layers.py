"""The layer order of adaflow (README "Architecture"), read from the code with `ast` (nothing is
imported): each module may import adaflow modules only from its own layer or a lower one, and
imports of adaflow modules inside functions are not used to hide an upward edge (there are none)."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adaflow")

# Lowest first; a layer may import itself and anything below.
LAYERS = (
    ("adaflow.config", "adaflow.config_defaults", "adaflow.errors", "adaflow.storage", "adaflow.flow",
     "adaflow.data", "adaflow.parallel"),                            # 0 leaves
    ("adaflow.models",),                             # 1 networks
    ("adaflow.rl",),                                 # 2 REINFORCE, rewards
    ("adaflow.objectives",),                         # 3 one module per objective (no registry)
    ("adaflow.prune",),                              # 4 groups, budget, importance, slicing, search
    ("adaflow.compose",),                            # 5 spec, model, generator, objective, flops, sampler
    ("adaflow.eval",),                               # 6 metrics, classifier, FID, generation helpers
    ("adaflow.methods",),                            # 7 the method table: objective name -> objective
    ("adaflow.train",),                              # 8 loop, state, checkpoints
    ("adaflow.pipelines",),                          # 9 multi-run drivers (grouped, compose recipe)
    ("adaflow.convert",),                            # 10 PyTorch checkpoints
    ("adaflow.commands", "adaflow.cli"),             # 11 the CLI
)


def layer_of(module: str) -> int:
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  raise KeyError(module)


def _modules():
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def _imports(module: str, path: str):
  """(imported adaflow module, line, inside a function) for every import statement of `path`."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  in_func = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      in_func.update(id(n) for n in ast.walk(node))
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [base + "." + a.name for a in node.names] + [base]
    else:
      continue
    for name in names:
      if name == "adaflow" or not name.startswith("adaflow."):
        continue
      yield name, node.lineno, id(node) in in_func


MODULES = _modules()


def test_every_module_has_a_layer():
  for module in MODULES:
    if module != "adaflow":
      layer_of(module)


def test_imports_go_down_the_layers():
  bad = []
  for module, path in sorted(MODULES.items()):
    if module == "adaflow":
      continue
    own = layer_of(module)
    for name, line, _ in _imports(module, path):
      target = name
      while target not in MODULES and "." in target:   # `from adaflow.x import name`: the module x
        target = target.rpartition(".")[0]
      if target == "adaflow":
        continue
      if layer_of(target) > own:
        bad.append(f"{os.path.relpath(path, os.path.dirname(ROOT))}:{line}: layer {own} ({module}) imports "
                   f"layer {layer_of(target)} ({target})")
  assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_function_level_imports_of_adaflow():
  """Imports of adaflow modules sit at the top of the module (only optional heavy third-party
  dependencies such as torch are imported inside functions)."""
  bad = [f"{os.path.relpath(path, os.path.dirname(ROOT))}:{line}: {name}"
         for module, path in sorted(MODULES.items()) for name, line, inside in _imports(module, path) if inside]
  assert not bad, "imports inside functions:\n" + "\n".join(bad)


def test_layer_of_knows_the_order():
  assert layer_of("adaflow.flow.samplers") == 0
  assert layer_of("adaflow.train.loop") > layer_of("adaflow.methods") > layer_of("adaflow.compose.objective") > \
      layer_of("adaflow.objectives.dqvae")
  with pytest.raises(KeyError):
    layer_of("adaflow.unknown")
