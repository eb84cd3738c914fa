"""The timestep-grouped parameter tree: one (possibly pruned) DiT per contiguous range of flow time.

`{"group_0": params_0, ..., "group_{N-1}": params_{N-1}}`, each `params_i` the unboxed
`{'params': ...}` of group i's network; the sub-models may differ in heads, MLP width and depth
(`DiT(blocks=...)`), so each group is its own compiled program. Group i holds t in
[edges[i], edges[i + 1]) (the last one also t = 1): the buckets of `adaflow.flow.TimePartition`,
whose `segments` cut a sampling grid into runs of one group (`adaflow.compose` samples and trains
such trees).
"""


def group_key(i: int) -> str:
  return f"group_{i}"
