"""Sample quality for adaflow's small embedded datasets: "FD" and class accuracy.

FD is the Frechet distance between Gaussian fits (mean, unbiased covariance, float64) of the
128-d penultimate-layer features of the per-dataset classifier in `adaflow.eval.classifier`,
for generated samples versus the real images the classifier's reference statistics were computed
on. It is NOT Inception FID: the feature network is a small CNN trained on the dataset itself,
so FD values are only comparable between runs on the same dataset configuration with the same
cached classifier (same seed and recipe) and the same number of samples; they are not comparable
across datasets, and not with published FIDs. FD also has a nonzero floor for finite samples:
`real_vs_real_fd` measures it between two disjoint real subsets, which is the reference value to
quote next to FD numbers.

FD comes with a bootstrap 95% interval (`adaflow.eval.bootstrap`): `fd_low`, `fd_high`.

Class accuracy is the fraction of class-conditional samples that the classifier assigns to the
class they were generated for (its held-out accuracy on real images is the ceiling). Unlabeled
data has no classes: its network is the exemplar one (`classifier.task == "instances"`), FD uses
its features the same way, and class accuracy is None.
"""
from __future__ import annotations

import numpy as np

from adaflow import data as data_lib
from adaflow.eval.bootstrap import fd_interval
from adaflow.eval.frechet import frechet_distance


def evaluate_samples(classifier, images, labels=None, *, num_resamples: int = 200) -> dict:
  """Compares samples with the classifier's real-data statistics.

  Args:
    classifier: a `FeatureClassifier` with `reference_stats` set.
    images: [N, H, W, C] samples in [-1, 1] (clipped to that range first), N >= 2.
    labels: optional [N] int classes the samples were conditioned on (unused by an exemplar network).
    num_resamples: bootstrap resamples for FD's 95% interval.

  Returns:
    dict(fd=float, fd_low=float, fd_high=float, class_acc=float or None, num=N).
  """
  if classifier.reference_stats is None:
    raise ValueError("classifier.reference_stats is None; build it with get_classifier().")
  images = np.asarray(images)
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(classifier.image_shape):
    raise ValueError(
        f"images must have shape [N, {', '.join(map(str, classifier.image_shape))}] to match "
        f"the dataset's classifier; got {images.shape}.")
  n = images.shape[0]
  if n < 2:
    raise ValueError(f"evaluate_samples needs at least 2 images for a covariance; got {n}.")
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (n,):
      raise ValueError(f"labels must have shape [{n}] to match the images; got {labels.shape}.")
  images = np.clip(images.astype(np.float32), -1.0, 1.0)
  feats, logits = classifier.features_and_logits(images)
  interval = fd_interval(feats, classifier.reference_stats, num_resamples=num_resamples)
  class_acc = None if labels is None or classifier.task != "classes" else float(np.mean(logits.argmax(-1) == labels))
  return dict(fd=interval.value, fd_low=interval.low, fd_high=interval.high, class_acc=class_acc, num=int(n))


def real_vs_real_fd(classifier, data_config, num: int, seed: int = 1) -> float:
  """FD between two disjoint sets of `num` real images each: the finite-sample FD floor.

  Loads 2 * num real images with `adaflow.data.load_arrays` and splits them in halves.
  """
  if num < 2:
    raise ValueError(f"real_vs_real_fd needs num >= 2; got {num}.")
  total = data_lib.get_info(data_config).num_examples
  if total is not None and 2 * num > int(total):
    raise ValueError(
        f"real_vs_real_fd(num={num}) needs {2 * num} distinct real images but the dataset has "
        f"{total}; use num <= {int(total) // 2}.")
  images, _ = data_lib.load_arrays(data_config, num=2 * num, seed=seed)
  images = np.asarray(images)
  first = classifier.feature_statistics(images[:num])
  second = classifier.feature_statistics(images[num:2 * num])
  return frechet_distance(*first, *second)
