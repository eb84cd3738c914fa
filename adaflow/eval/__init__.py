"""adaflow.eval: sample-quality metrics (classifier-feature Frechet distance, class accuracy).

See `adaflow.eval.quality` for what "FD" is (and is not: it is not Inception FID) and
`adaflow.eval.bootstrap` for its confidence intervals.
"""
from adaflow.eval.classifier import (
    ClassifierNet,
    FeatureClassifier,
    build_classifier,
    get_classifier,
    train_classifier,
)
from adaflow.eval.bootstrap import Interval, fd_difference_interval, fd_interval
from adaflow.eval.frechet import StreamingStatistics, feature_statistics, frechet_distance
from adaflow.eval.quality import evaluate_samples, real_vs_real_fd
