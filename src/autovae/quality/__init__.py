"""Sample quality: feature extractors (:mod:`.features`) and metric formulas (:mod:`.metrics`).

See :mod:`autovae.quality.metrics` for FID, KID, IS, the balance metric and reconstruction
metrics, and :mod:`autovae.quality.features` for the named feature extractors.
"""

from .features import (
    CACHE_ENV,
    INCEPTION_ENV,
    DomainClassifier,
    DomainFeatures,
    FeatureExtractor,
    InceptionFeatures,
    classifier_cache_dir,
    domain_classifier,
    inception_features,
    train_domain_classifier,
)
from .metrics import (
    PrecomputedFeatures,
    balance_metric,
    balance_metric_images,
    reconstruction_metrics,
    sample_quality,
)

__all__ = [
    "CACHE_ENV",
    "INCEPTION_ENV",
    "DomainClassifier",
    "DomainFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "PrecomputedFeatures",
    "balance_metric",
    "balance_metric_images",
    "classifier_cache_dir",
    "domain_classifier",
    "inception_features",
    "reconstruction_metrics",
    "sample_quality",
    "train_domain_classifier",
]
