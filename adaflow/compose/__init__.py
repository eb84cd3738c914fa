"""Composition of the adaptive-compute methods in one sampler (issue 11).

    spec.py       `config.compose` -> a validated ComposeSpec (which methods are on, their settings);
                  every impossible combination is a ValueError before anything is compiled
    model.py      the per-group networks: ONE DiT / RoutedDiT definition with PPFlow stages, cloned per
                  timestep group with pruned BlockSpecs; parameter checks; the finest-stage dense view
    generator.py  ComposedGenerator: integrates each (group, stage) run of the time grid with its network;
                  the one sampler of the DiT family (`generator_for(config, info)` builds it for any run)
    objective.py  ComposedObjective (`objective="composed"`): flow matching over (group x stage) cells
                  with routing's ratio loss, so the loop trains any subset
    sampler.py    ComposedSampler: the one entry point (adds the AdaDiff step policy on top)
    flops.py      analytic FLOPs per sampled image for any subset (same count for every method)
"""
