"""TG-DFER: text-guided weakly supervised dynamic facial expression recognition.

Stage 1 (``tgdfer extract``) caches frozen CLIP frame features; stage 2 (``tgdfer train``) trains the
temporal network and prompts on that cache. Nothing is imported or computed here beyond the version.
"""

__version__ = "0.1.0"
