"""DiffCR token routing (You et al., arXiv 2412.16822), one job per module: `routed_dit` (the router
and the routed DiT; the method is described there), `tokens` (top-k selection, gather / scatter,
routed and masked blocks), `ratios` (the learned keep ratios: regions, bins, clamp, loss,
projection, tables), `spec` (`config.routing` -> `RoutingSpec`)."""
