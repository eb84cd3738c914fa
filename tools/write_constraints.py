"""Writes constraints.txt: every installed package that `adaflow[test]` (and torch-fidelity)
needs, at its installed version. Run it in an environment where the test suite passes:

    pip install -e ".[test]" && pip install --no-deps torch-fidelity==0.4.0   # no -c: newest releases
    python -m pytest -q -n 2 && python tools/write_constraints.py
"""
import datetime
import importlib.metadata as md
import os
import platform

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = (("adaflow", ("test",)), ("torch-fidelity", ()))
SKIP = {"adaflow", "setuptools"}   # the project itself; setuptools belongs to the build environment


def closure() -> dict:
  seen = {}

  def walk(name, extras):
    try:
      dist = md.distribution(name)
    except md.PackageNotFoundError:
      return
    key = canonicalize_name(name)
    if key in seen:
      return
    seen[key] = (dist.metadata["Name"], dist.version.split("+")[0])   # 2.13.0+cpu -> 2.13.0
    for spec in dist.requires or []:
      req = Requirement(spec)
      if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("",) + tuple(extras)):
        walk(req.name, tuple(req.extras))

  for name, extras in ROOTS:
    walk(name, extras)
  return {k: v for k, v in seen.items() if k not in SKIP}


def main():
  rows = sorted(f"{n}=={v}" for n, v in closure().values())
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "constraints.txt")
  with open(path, "w") as f:
    f.write(f"# Exact versions the test suite and the quick start were run with (Python {platform.python_version()}, "
            f"{platform.machine()}, {datetime.date.today()}).\n# Both README commands and .ci/run install with "
            "`-c constraints.txt`; regenerate with tools/write_constraints.py.\n")
    f.write("\n".join(rows) + "\n")
  print(f"wrote {len(rows)} pins to {path}")


if __name__ == "__main__":
  main()
