"""TG-DFER: text-guided weakly supervised dynamic facial expression recognition.

Stage 1 (``tgdfer extract``) caches frozen CLIP frame features; stage 2 (``tgdfer train``) trains the
temporal network and prompts on that cache. ``import tgdfer`` defines only the version: the Python API
(``tgdfer.load_cache``, ``tgdfer.fit``, ``tgdfer.predict``, ... listed in ``tgdfer.api``) is imported, with torch,
on first use of one of its names, so the import stays instant. (``tgdfer.extract`` and ``tgdfer.train`` are the
stage modules; the API calls them ``extract_features`` and ``fit``.)
"""

__version__ = "0.1.0"

_API = frozenset(
    {
        "AugmentConfig",
        "ExtractConfig",
        "FeatureCache",
        "ModelConfig",
        "OptimConfig",
        "PredictConfig",
        "RunConfig",
        "SweepConfig",
        "TrainConfig",
        "TrainedRun",
        "apply_overrides",
        "extract_features",
        "fit",
        "load_cache",
        "load_run",
        "predict",
        "predict_features",
        "predict_frames",
        "test_view_features",
    }
)


def __getattr__(name: str):
    """``tgdfer.<API name>``: imported from ``tgdfer.api`` on first use (the package's one upward reference)."""
    if name in _API:
        import importlib

        value = getattr(importlib.import_module("tgdfer.api"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'tgdfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
