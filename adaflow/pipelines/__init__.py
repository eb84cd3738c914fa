"""Pipelines (above train): multi-run drivers that chain several `adaflow.train.loop.train` runs
with pruning or conversion between them, each resumable stage by stage.

  grouped.py         train-then-prune: stage 1 -> pruning per timestep group -> stage 2 per group
  recipe.py          the composed-model recipe: dense -> PPFlow -> routing -> grouped pruning -> selector
  convert_stages.py  a dense run -> a PPFlow step-0 checkpoint
"""
