"""The FID-50K protocol, one job per module: `run` (the whole protocol for one generator), `shards`
(resumable sample and feature shards), `features` (the Inception as a feature extractor),
`reference` (reference statistics), `scores` (Inception Score, precision / recall)."""
