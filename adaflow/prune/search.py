"""THE PRUNING PASS (arXiv 2312.13307, step 4), all in this file: per timestep group, a multi-round
proxy-based search for a sub-model structure within the group's FLOPs budget.

    importance (adaflow.prune.importance) -> SearchSpace (costs, budget, importance)
    for round r = 0 .. rounds-1:
        structures = proposer.propose(space, memory bank entries of this group, r, num)   # Proposer
        for each new structure: score = proxy(structure)                                  # ProxyEvaluator
            proxy = held-out flow-matching loss on t inside the group, of the base weights
                    sliced to the structure (adaflow.prune.slicing), optionally after a few
                    fine-tune steps
            memory bank += (group, round, proposer, structure, FLOPs, score)               # MemoryBank
    best = lowest proxy score in the bank for the group

Proposers (`Proposer` interface — an external proposer, e.g. a language model, plugs in by
subclassing it and passing it to the driver):
  * `ImportanceProposer`: round 0 is a greedy cut (remove the unit with the least importance per
    FLOP until the budget holds, then refill leftover budget with the most important units);
    later rounds do local search: mutate the best bank entries (move heads / MLP channel chunks
    between blocks, drop or revive a block) and repair back into the budget greedily.
  * `RandomProposer`: random unit removals, then random additions that still fit (so it uses the
    budget like the others), with random unit identities (the ablation).
Search space: per base block, the number of heads h_b and MLP channels m_b (multiples of
`mlp_granularity`), a block with h_b = m_b = 0 dropped; which heads / channels survive is the
top-h_b / top-m_b by importance (random for the random proposer).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import optax

from adaflow import storage
from adaflow.models.dit import BlockSpec, DiT
from adaflow.objectives.flow_loss import regression_loss
from adaflow.prune import budget as budget_lib
from adaflow.prune.importance import Importance
from adaflow.prune.slicing import Structure, check_structure, slice_params, sub_model

Counts = list  # [[heads, mlp], ...] per base block


# ---- search space ---------------------------------------------------------------------------
@dataclasses.dataclass
class SearchSpace:
  """What a proposer needs: the base model, its importance scores and the FLOPs budget."""
  model: DiT
  importance: Importance
  budget: float
  mlp_granularity: int = 32
  allow_block_drop: bool = True

  def __post_init__(self):
    m = self.model
    self.tokens = budget_lib.model_tokens(m)
    self.specs = m.block_specs
    self.head_cost = budget_lib.head_flops(m.hidden_size, self.tokens, m.head_dim)
    self.chan_cost = budget_lib.channel_flops(m.hidden_size, self.tokens)
    self.block_overhead = budget_lib.block_flops(m.hidden_size, self.tokens, m.head_dim, BlockSpec(0, 0))
    self.base_flops = budget_lib.model_flops(m)
    # importance sorted descending per block (removing the h-th head loses sorted[h-1])
    self._h_sorted = [np.sort(h)[::-1] for h in self.importance.heads]
    self._m_sorted = [np.sort(x)[::-1] for x in self.importance.mlp]
    if self.flops(self.minimal_counts()) > self.budget:
      raise ValueError(f"config.grouped.k: budget {self.budget:.3g} FLOPs is below the smallest "
                       f"structure ({self.flops(self.minimal_counts()):.3g}); raise k")

  def full_counts(self) -> Counts:
    return [[s.num_heads, s.mlp_dim] for s in self.specs]

  def minimal_counts(self) -> Counts:
    c = [[0, 0] for _ in self.specs]
    c[0] = [1, 0] if self.specs[0].num_heads else [0, min(self.mlp_granularity, self.specs[0].mlp_dim)]
    return c

  def flops(self, counts: Counts) -> int:
    return budget_lib.model_flops(self.model, [BlockSpec(h, m) for h, m in counts if h or m])

  def fits(self, counts: Counts) -> bool:
    return self.flops(counts) <= self.budget and any(h or m for h, m in counts)

  def chunk(self, b: int, m: int) -> int:
    """Channels one MLP move adds/removes in block b at width m (the remainder to stay on the grid)."""
    g = self.mlp_granularity
    return m % g or min(g, m) if m else 0

  # candidate moves: (kind, block, delta_flops, importance_lost_or_gained)
  def _removals(self, c: Counts, frozen: set) -> list[tuple[str, int, int, float]]:
    out = []
    kept = sum(1 for h, m in c if h or m)
    for b, (h, m) in enumerate(c):
      empty_after_h = (h == 1 and m == 0)
      if h > 0 and ("h", b) not in frozen and not (empty_after_h and kept == 1):
        cost = self.head_cost + (self.block_overhead if empty_after_h else 0)
        out.append(("h", b, cost, float(self._h_sorted[b][h - 1])))
      if m > 0 and ("m", b) not in frozen:
        k = self.chunk(b, m)
        if not (h == 0 and k == m and kept == 1):
          cost = k * self.chan_cost + (self.block_overhead if (h == 0 and k == m) else 0)
          out.append(("m", b, cost, float(self._m_sorted[b][m - k:m].sum())))
      if self.allow_block_drop and (h or m) and kept > 1 and ("b", b) not in frozen:
        cost = self.block_overhead + h * self.head_cost + m * self.chan_cost
        score = float(self.importance.blocks[b]) * (h * self.head_cost + m * self.chan_cost) / max(
            self.specs[b].num_heads * self.head_cost + self.specs[b].mlp_dim * self.chan_cost, 1)
        out.append(("b", b, cost, score))
    return out

  def _additions(self, c: Counts, frozen: set) -> list[tuple[str, int, int, float]]:
    out = []
    for b, (h, m) in enumerate(c):
      empty = not (h or m)
      if h < self.specs[b].num_heads and ("h", b) not in frozen and ("b", b) not in frozen:
        out.append(("h", b, self.head_cost + (self.block_overhead if empty else 0), float(self._h_sorted[b][h])))
      if m < self.specs[b].mlp_dim and ("m", b) not in frozen and ("b", b) not in frozen:
        k = min(self.mlp_granularity - m % self.mlp_granularity, self.specs[b].mlp_dim - m)
        out.append(("m", b, k * self.chan_cost + (self.block_overhead if empty else 0),
                    float(self._m_sorted[b][m:m + k].sum())))
    return out

  def _apply(self, c: Counts, kind: str, b: int, sign: int) -> Counts:
    c = [list(x) for x in c]
    if kind == "h":
      c[b][0] += sign
    elif kind == "m":
      m = c[b][1]
      c[b][1] = m - self.chunk(b, m) if sign < 0 else min(
          m + self.mlp_granularity - m % self.mlp_granularity, self.specs[b].mlp_dim)
    else:
      c[b] = [0, 0]
    return c

  def shrink(self, c: Counts, frozen: set = frozenset(), rng: Optional[np.random.Generator] = None) -> Counts:
    """Removes units (least importance per FLOP, or random with `rng`) until within budget."""
    c = [list(x) for x in c]
    while self.flops(c) > self.budget:
      cand = self._removals(c, set(frozen))
      if not cand:
        cand = self._removals(c, set())
      if not cand:
        break
      if rng is not None:
        kind, b, _, _ = cand[rng.integers(len(cand))]
      else:
        kind, b, _, _ = min(cand, key=lambda x: x[3] / max(x[2], 1))
      c = self._apply(c, kind, b, -1)
    return c

  def grow(self, c: Counts, frozen: set = frozenset(), rng: Optional[np.random.Generator] = None) -> Counts:
    """Adds the most important unit per FLOP (or a random one with `rng`) that still fits, until
    none fits."""
    c = [list(x) for x in c]
    while True:
      f = self.flops(c)
      cand = [x for x in self._additions(c, set(frozen)) if f + x[2] <= self.budget]
      if not cand:
        return c
      if rng is not None:
        kind, b, _, _ = cand[rng.integers(len(cand))]
      else:
        kind, b, _, _ = max(cand, key=lambda x: x[3] / max(x[2], 1))
      c = self._apply(c, kind, b, +1)

  def structure(self, counts: Counts, rng: Optional[np.random.Generator] = None) -> Structure:
    """Counts -> Structure keeping the top units by importance (random units with `rng`)."""
    heads, mlp = [], []
    for b, (h, m) in enumerate(counts):
      for scores, n, out in ((self.importance.heads[b], h, heads), (self.importance.mlp[b], m, mlp)):
        if rng is not None:
          idx = rng.choice(len(scores), size=n, replace=False) if n else np.zeros((0,), int)
        else:
          idx = np.argsort(-np.asarray(scores), kind="stable")[:n]
        out.append(tuple(sorted(int(i) for i in idx)))
    return Structure(tuple(heads), tuple(mlp))


# ---- memory bank ----------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
  group: int
  round: int
  proposer: str
  structure: Structure
  flops: int
  score: float

  def to_json(self) -> dict:
    return {"group": self.group, "round": self.round, "proposer": self.proposer, "flops": self.flops,
            "score": self.score, "counts": self.structure.counts(), "structure": self.structure.to_json()}

  @staticmethod
  def from_json(d: dict) -> "Entry":
    return Entry(int(d["group"]), int(d["round"]), d["proposer"], Structure.from_json(d["structure"]),
                 int(d["flops"]), float(d["score"]))


class MemoryBank:
  """Every (structure, proxy score) evaluated, per group; JSON on disk."""

  def __init__(self, entries: Sequence[Entry] = ()):
    self.entries = list(entries)

  def add(self, e: Entry) -> None:
    self.entries.append(e)

  def for_group(self, group: int) -> list[Entry]:
    return [e for e in self.entries if e.group == group]

  def seen(self, group: int, s: Structure) -> bool:
    k = s.key()
    return any(e.structure.key() == k for e in self.for_group(group))

  def best(self, group: int, max_flops: Optional[float] = None) -> Optional[Entry]:
    c = [e for e in self.for_group(group) if max_flops is None or e.flops <= max_flops]
    return min(c, key=lambda e: e.score) if c else None

  def rounds_done(self, group: int) -> int:
    return max((e.round for e in self.for_group(group)), default=-1) + 1

  def save(self, path: str) -> None:
    """Atomic (tmp + rename locally, one upload on gs://): a kill mid-save keeps the last bank."""
    storage.write_json(path, {"entries": [e.to_json() for e in self.entries]}, atomic=True, indent=1)

  @staticmethod
  def load(path: str) -> "MemoryBank":
    if not storage.exists(path):
      return MemoryBank()
    return MemoryBank([Entry.from_json(d) for d in storage.read_json(path)["entries"]])


# ---- proposers ------------------------------------------------------------------------------
class Proposer(abc.ABC):
  """Suggests structures within `space.budget`; sees this group's memory bank entries."""
  name = "proposer"

  @abc.abstractmethod
  def propose(self, space: SearchSpace, history: Sequence[Entry], round_index: int, num: int,
              rng: np.random.Generator) -> list[Structure]:
    """Up to `num` structures (each must fit the budget; the search re-checks)."""


class ImportanceProposer(Proposer):
  """Greedy importance cut in round 0, then local search around the best bank entries."""
  name = "importance"

  def __init__(self, elite: int = 2, max_moves: int = 2):
    self.elite, self.max_moves = elite, max_moves

  def mutate(self, space: SearchSpace, counts: Counts, rng: np.random.Generator) -> Counts:
    c = [list(x) for x in counts]
    frozen: set = set()
    for _ in range(int(rng.integers(1, self.max_moves + 1))):
      op = rng.choice(["add_h", "add_m", "rm_h", "rm_m", "drop", "revive"])
      b = int(rng.integers(len(c)))
      h, m = c[b]
      if op == "add_h" and h < space.specs[b].num_heads:
        c = space._apply(c, "h", b, +1); frozen |= {("h", b), ("b", b)}
      elif op == "add_m" and m < space.specs[b].mlp_dim:
        c = space._apply(c, "m", b, +1); frozen |= {("m", b), ("b", b)}
      elif op == "rm_h" and h > 0 and (m > 0 or sum(1 for x in c if x[0] or x[1]) > 1):
        c = space._apply(c, "h", b, -1); frozen |= {("h", b)}
      elif op == "rm_m" and m > 0 and (h > 0 or sum(1 for x in c if x[0] or x[1]) > 1):
        c = space._apply(c, "m", b, -1); frozen |= {("m", b)}
      elif op == "drop" and space.allow_block_drop and (h or m) and sum(1 for x in c if x[0] or x[1]) > 1:
        c[b] = [0, 0]; frozen |= {("b", b)}
      elif op == "revive" and not (h or m):
        c[b] = [min(1, space.specs[b].num_heads), min(space.mlp_granularity, space.specs[b].mlp_dim)]
        frozen |= {("h", b), ("m", b), ("b", b)}
    c = space.shrink(c, frozen=frozen)   # never undo this mutation's own moves
    return space.grow(c, frozen=frozen)

  def propose(self, space, history, round_index, num, rng):
    out: list[Structure] = []
    if not history:
      greedy = space.grow(space.shrink(space.full_counts()))
      out.append(space.structure(greedy))
      parents = [greedy]
    else:
      ranked = sorted(history, key=lambda e: e.score)[: self.elite]
      parents = [e.structure.counts() for e in ranked]
    seen = {e.structure.key() for e in history} | {s.key() for s in out}
    return _collect(space, out, seen, num, lambda i: self.mutate(space, parents[i % len(parents)], rng))


class RandomProposer(Proposer):
  """Random removals (random block, random unit kind) until within budget, random refill of the
  leftover budget, random unit identities."""
  name = "random"

  def propose(self, space, history, round_index, num, rng):
    draw = lambda i: space.grow(space.shrink(space.full_counts(), rng=rng), rng=rng)
    return _collect(space, [], {e.structure.key() for e in history}, num, draw, rng)


def _collect(space: SearchSpace, out: list[Structure], seen: set, num: int, draw: Callable[[int], Counts],
             rng: Optional[np.random.Generator] = None) -> list[Structure]:
  """`out` plus the structures (`space.structure(counts, rng)`) of counts `draw(i)`, i = 1, 2, ..., that
  fit the budget and whose keys are not in `seen` (updated), until `out` holds `num` or after 50 * num draws."""
  for i in range(1, 50 * num + 1):
    if len(out) >= num:
      break
    c = draw(i)
    if not space.fits(c):
      continue
    s = space.structure(c, rng=rng)
    if s.key() not in seen:
      seen.add(s.key())
      out.append(s)
  return out


PROPOSERS = {"importance": ImportanceProposer, "random": RandomProposer}


def make_proposer(name: str) -> Proposer:
  if name not in PROPOSERS:
    raise ValueError(f"config.grouped.proposer: must be one of {sorted(PROPOSERS)} (or pass a Proposer "
                     f"object to the driver), got {name!r}")
  return PROPOSERS[name]()


# ---- proxy ----------------------------------------------------------------------------------
class ProxyEvaluator:
  """Held-out flow-matching loss of a structure on its group's times (lower is better).

  heldout: (images [P, H, W, C], labels [P], noise [P, H, W, C], t [P]) fixed, so scores of
  different structures are comparable. With `finetune_steps > 0`, the sliced weights first take
  that many Adam steps on `finetune_batch(step) -> (x, y, noise, t)` (times inside the group).
  """

  def __init__(self, model: DiT, interpolant, base_params: Any, heldout: tuple, finetune_steps: int = 0,
               finetune_batch: Optional[Callable[[int], tuple]] = None, lr: float = 1e-4):
    self.model, self.interpolant, self.base_params = model, interpolant, jax.device_get(base_params)
    self.heldout = heldout
    self.finetune_steps, self.finetune_batch, self.lr = int(finetune_steps), finetune_batch, lr

  def _loss_fn(self, model: DiT):
    def loss(params, x, y, noise, t):
      return regression_loss(functools.partial(model.apply, params), self.interpolant, x, noise, t, y)
    return loss

  def __call__(self, structure: Structure) -> float:
    model = sub_model(self.model, structure)
    params = slice_params(self.base_params, self.model, structure)
    loss = self._loss_fn(model)
    if self.finetune_steps > 0:
      if self.finetune_batch is None:
        raise ValueError("ProxyEvaluator: finetune_steps > 0 needs finetune_batch")
      tx = optax.adam(self.lr)
      opt = tx.init(params)

      @jax.jit
      def step(params, opt, batch):
        g = jax.grad(loss)(params, *batch)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt
      for i in range(self.finetune_steps):
        params, opt = step(params, opt, self.finetune_batch(i))
    return float(jax.jit(loss)(params, *self.heldout))


# ---- the search -----------------------------------------------------------------------------
def search_group(space: SearchSpace, proposer: Proposer, proxy: Callable[[Structure], float], bank: MemoryBank,
                 group: int, rounds: int, per_round: int, seed: int = 0,
                 on_round: Optional[Callable[[MemoryBank], None]] = None, log=print) -> Entry:
  """Runs the remaining rounds for `group` (resumes after the bank's last round); returns the best
  entry within the budget. Every scored structure is added to `bank`; `on_round(bank)` after each
  round (the driver saves the JSON there)."""
  for r in range(bank.rounds_done(group), rounds):
    rng = np.random.default_rng([seed, group, r])
    history = bank.for_group(group)
    proposals = proposer.propose(space, history, r, per_round, rng)
    for s in proposals:
      check_structure(s, space.model)
      f = space.flops(s.counts())
      if f > space.budget or bank.seen(group, s):
        log(f"  group {group} round {r}: skipped a proposal ({'over budget' if f > space.budget else 'duplicate'})")
        continue
      score = proxy(s)
      bank.add(Entry(group, r, proposer.name, s, int(f), float(score)))
      log(f"  group {group} round {r} [{proposer.name}]: counts {s.counts()} FLOPs {f / space.base_flops:.3f} F "
          f"proxy {score:.5f}")
    if on_round is not None:
      on_round(bank)
  best = bank.best(group, space.budget)
  if best is None:
    raise ValueError(f"pruning found no structure within the budget for group {group}")
  return best
