"""Timestep-grouped train-then-prune (arXiv 2312.13307).

  groups.py      N contiguous timestep groups, equal width in SNR dB
  budget.py      analytic FLOPs of (pruned) DiTs; the progressive per-group budget
  importance.py  magnitude / first-order Taylor importance of heads, MLP channels, blocks
  slicing.py     Structure -> real smaller parameter arrays (and the equivalent masks)
  search.py      THE PRUNING PASS: proposer + proxy + memory bank, per group
"""
