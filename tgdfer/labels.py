"""Emotion classes per dataset and the text the prompts are made of (paper §3.3.1).

The descriptors are tgdfer's own: each names the facial movements (action units, in plain words) that mark the
expression, since the paper reports CLIP's text tower separates expressions better from movement descriptions
than from class names alone. Users' own label sets fall back to a generic sentence unless they pass a JSON file
of ``{"label": "descriptor"}`` (``--set model.descriptors=FILE``).
"""

from __future__ import annotations

import json
from pathlib import Path

from tgdfer.errors import ConfigError

# Class order follows each dataset's official label numbering, so label i here is label i+1 in DFEW's CSVs.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "dfew": ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"),
    "ferv39k": ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"),
    "mafw": (
        "anger",
        "disgust",
        "fear",
        "happiness",
        "neutral",
        "sadness",
        "surprise",
        "contempt",
        "anxiety",
        "helplessness",
        "disappointment",
    ),
}

DESCRIPTORS: dict[str, str] = {
    "happiness": "lip corners pulled up into a smile, cheeks lifted, and crow's feet creasing beside the eyes",
    "sadness": "inner brows drawn up and together, heavy upper eyelids, and lip corners pulled down",
    "neutral": "a relaxed face with a smooth brow, eyes open at rest, and a closed, level mouth",
    "anger": "brows lowered and knitted, a hard glaring stare, and lips pressed thin or pulled back",
    "surprise": "brows raised high, eyes opened wide showing white, and the jaw dropped with parted lips",
    "disgust": "a wrinkled nose, the upper lip raised, and the eyes narrowed",
    "fear": "brows raised and pulled together, wide tense eyes, and lips stretched back toward the ears",
    "contempt": "one lip corner tightened and raised on one side in a smirk, the head slightly tilted back",
    "anxiety": "a tense furrowed forehead, restless eyes, and lips pressed together or bitten",
    "helplessness": "inner brows lifted, a slack open mouth, and a lowered, unfocused gaze",
    "disappointment": "a downcast gaze, lip corners sagging, and the mouth slack after a sigh",
}

# Common spellings in users' label columns, mapped to the names above.
SYNONYMS: dict[str, str] = {
    "happy": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "surprised": "surprise",
    "disgusted": "disgust",
    "fearful": "fear",
    "scared": "fear",
    "anxious": "anxiety",
    "calm": "neutral",
}

# Hand-written prompt templates, used when a prompt has no learnable context (Table 5 rows a-f).
CLASS_TEMPLATE = "a face showing {}."
DESCRIPTOR_TEMPLATE = "a face with {}."


def canonical(label: str) -> str:
    """Lower-case name of a label, with common synonyms folded ("Happy" -> "happiness")."""
    name = label.strip().lower()
    return SYNONYMS.get(name, name)


def load_descriptor_file(path: str | Path) -> dict[str, str]:
    """Read a JSON object mapping class names to descriptor sentences."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(
            f"{path}: expected a JSON object of class name -> descriptor text, found {type(data).__name__}"
        )
    return {canonical(k): v for k, v in data.items()}


def descriptors_for(class_names: tuple[str, ...] | list[str], extra: dict[str, str] | None = None) -> list[str]:
    """One movement descriptor per class; unknown classes get a generic sentence naming the class."""
    table = {**DESCRIPTORS, **(extra or {})}
    return [table.get(canonical(c), f"the facial expression of {c}") for c in class_names]


def prompt_bodies(
    class_names: tuple[str, ...] | list[str], text: str, extra: dict[str, str] | None = None
) -> list[str]:
    """The words after the context of each class prompt: class names or descriptors, ending in a full stop."""
    if text == "class":
        return [f"{c}." for c in class_names]
    if text == "descriptors":
        return [f"{d}." for d in descriptors_for(class_names, extra)]
    raise ConfigError(f"prompt text: expected 'class' or 'descriptors', found {text!r}")


def fixed_prompts(
    class_names: tuple[str, ...] | list[str], text: str, extra: dict[str, str] | None = None
) -> list[str]:
    """Whole hand-written prompts for a prompt without learnable context."""
    if text == "class":
        return [CLASS_TEMPLATE.format(c) for c in class_names]
    if text == "descriptors":
        return [DESCRIPTOR_TEMPLATE.format(d) for d in descriptors_for(class_names, extra)]
    raise ConfigError(f"prompt text: expected 'class' or 'descriptors', found {text!r}")
