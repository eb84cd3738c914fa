"""The ImageNet 64x64 reproduction path (README.md here): recipes (config.py, also a config file
for `adaflow --config experiments/imagenet64/config.py:<method>`), FLOPs (flops.py) and the CPU
smoke run (smoke.py), run from the repository root as `python -m experiments.imagenet64.NAME`."""
