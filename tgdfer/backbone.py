"""The frozen OpenAI CLIP backbone. This is the only module that imports ``clip``.

``load_clip`` takes what ``--clip`` takes: a model name known to OpenAI's package (``ViT-B/32``, downloaded
to ``~/.cache/clip`` for users who are online) or a path to a checkpoint file: OpenAI's TorchScript archive or a
saved state_dict. Either way the weights go through ``clip.model.build_model``, so every source yields the same
module, frozen, in eval mode, with an explicit dtype, and with a SHA-256 of its weights for the cache.

Shapes: images (N, 3, S, S) float, normalised with CLIP's mean/std -> features (N, D); text tokens (P, L) int64.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import socket
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tgdfer.errors import ClipLoadError

# Architectures by name, in clip.model.CLIP's argument order. "ViT-B/32" is OpenAI's; "tiny" keeps every class
# and the real tokenizer vocabulary but small widths, for tests and the offline demo. Widths are multiples of 64
# because build_model derives the head count as width // 64.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "ViT-B/32": dict(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    ),
    "tiny": dict(
        embed_dim=32,
        image_resolution=224,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
}


def clip_package() -> types.ModuleType:
    """Import OpenAI's ``clip`` package, whatever the installed setuptools.

    openai-clip 1.0.1 runs ``from pkg_resources import packaging`` at import, and setuptools 82 removed
    ``pkg_resources``. When it is absent, a stand-in holding the real ``packaging`` (all clip uses) is lent for
    the duration of the import only, so no other library ever sees a fake ``pkg_resources``.
    """
    module = sys.modules.get("clip")
    if module is None:
        if importlib.util.find_spec("pkg_resources") is None:
            import packaging.version  # noqa: F401  (clip calls packaging.version.parse)

            stand_in = types.ModuleType("pkg_resources")
            stand_in.packaging = sys.modules["packaging"]  # type: ignore[attr-defined]
            sys.modules["pkg_resources"] = stand_in
            try:
                module = importlib.import_module("clip")
            finally:
                if sys.modules.get("pkg_resources") is stand_in:
                    del sys.modules["pkg_resources"]
        else:
            module = importlib.import_module("clip")
    if not (hasattr(module, "load") and hasattr(module, "tokenize")):
        raise ClipLoadError(
            f"expected OpenAI's CLIP package as 'clip', found {getattr(module, '__file__', module)!r} (the PyPI "
            "package named 'clip' is an unrelated clipboard tool): pip uninstall clip && pip install openai-clip"
        )
    return module


@dataclass(frozen=True)
class FrozenClip:
    """A loaded CLIP model that nothing trains."""

    model: nn.Module  # clip.model.CLIP in eval mode, requires_grad False
    source: str  # what --clip named: a model name or a file path
    sha256: str  # SHA-256 of the weights as built (see weights_sha256); stored in the cache

    @property
    def dim(self) -> int:
        """D: the joint embedding width (512 for ViT-B/32)."""
        return int(self.model.text_projection.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.model.visual.input_resolution)

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels -> (N, D) image features, in the model's dtype."""
        return self.model.encode_image(pixels.to(device=self.device, dtype=self.dtype))


def cast_image_tower(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """CLIP's image tower (``model.visual``) with its conv, linear, attention and projection weights in ``dtype``,
    as ``clip.model.convert_weights`` does for fp16: the LayerNorms stay fp32 (CLIP's LayerNorm computes in fp32
    and casts back, and CPU layer_norm refuses an fp32 input with bf16/fp16 weights); embeddings are cast to the
    activations' dtype by CLIP's forward. Images then go in as ``dtype`` (``FrozenClip.dtype`` follows conv1)."""
    visual = model.visual
    for layer in visual.modules():
        tensors = []
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            tensors = [layer.weight, layer.bias]
        elif isinstance(layer, nn.MultiheadAttention):
            names = [*(f"{s}_proj_weight" for s in ("in", "q", "k", "v")), "in_proj_bias", "bias_k", "bias_v"]
            tensors = [getattr(layer, name) for name in names]
        tensors.append(getattr(layer, "proj", None))
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                tensor.data = tensor.data.to(dtype)
    return model


def drop_text_tower(model: nn.Module) -> nn.Module:
    """Free CLIP's text transformer and token embedding (ViT-B/32: 63 M parameters, 253 MB in fp32) for a caller
    that has encoded all its text; ``encode_text`` no longer works. ``positional_embedding`` and
    ``text_projection`` stay (``FrozenClip.context_length`` and ``dim`` read them; 0.3 M parameters)."""
    model.transformer = None
    model.token_embedding = None
    return model


def available_models() -> list[str]:
    return list(clip_package().available_models())


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state_dict, in name order, with its name, dtype and shape.

    It hashes the weights, not the file, so a TorchScript archive and the state_dict saved from it agree.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _is_torchscript(path: Path) -> bool:
    # torch.save and torch.jit.save both write zip archives; only TorchScript ones carry compiled code.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    if _is_torchscript(path):
        # OpenAI's own files. Their weights, read as clip.load(jit=False) reads them; clip.load would then also
        # build a module from them (a second copy) that load_clip builds anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates jit.load; the archives stay as they are
            try:
                return torch.jit.load(str(path), map_location="cpu").eval().state_dict()
            except RuntimeError as exc:
                raise ClipLoadError(f"{path}: expected a CLIP TorchScript archive, could not read it: {exc}") from exc
    # A state_dict file. clip.load cannot read these in openai-clip 1.0.1: its failed torch.jit.load consumes
    # the open file before torch.load reads it (EOFError), so we read the dict ourselves.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ClipLoadError(
            f"{path}: expected a CLIP TorchScript archive or state_dict, could not read it: {exc}"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "text_projection" not in obj:
        found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ClipLoadError(f"{path}: expected a CLIP state_dict with 'text_projection', found {found}")
    return obj


def build_clip(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The module ``clip.model.build_model(state_dict)`` returns (same weights, dtypes, hash), without its peak.

    build_model makes a randomly initialised fp32 CLIP and copies the weights into it, so two full copies live
    at once (ViT-B/32: 2 x 605 MB beside the file's). Here that skeleton is built on the meta device (no memory),
    which also gives each tensor the dtype build_model gives it (its ``convert_weights`` rounds conv, linear,
    attention and projection weights to fp16); then each tensor of ``state_dict``, rounded to that dtype, is
    assigned in place of the skeleton's, and ``state_dict`` is emptied as it goes so each source tensor can be
    freed once converted.
    """
    clip = clip_package()
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # copying into meta parameters does nothing, as wanted here
        skeleton = clip.model.build_model(dict(state_dict))  # also its checks: an unknown key raises
    dtypes = {key: t.dtype for key, t in skeleton.state_dict().items()}
    weights = {}
    for key in list(state_dict):
        tensor = state_dict.pop(key)
        if key in dtypes:  # build_model drops input_resolution, context_length, vocab_size
            weights[key] = tensor.to(dtypes[key])
    skeleton.load_state_dict(weights, strict=True, assign=True)
    mask = skeleton.build_attention_mask()  # the text blocks' causal mask was made on the meta device
    for block in skeleton.transformer.resblocks:
        block.attn_mask = mask
    return skeleton.eval()


def _download(name: str, download_root: str | None) -> nn.Module:
    clip = clip_package()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # clip's urlopen has no timeout of its own; offline it would hang
    try:
        model, _ = clip.load(name, device="cpu", jit=False, download_root=download_root)
    except Exception as exc:
        root = download_root or "~/.cache/clip"
        raise ClipLoadError(
            f"could not download or read CLIP {name} into {root}: {exc}. Offline? Copy OpenAI's {name} file "
            "there, or pass --clip /path/to/checkpoint.pt"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return model


def load_clip(
    source: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    download_root: str | None = None,
) -> FrozenClip:
    """Load frozen CLIP from a model name or checkpoint path; dtype defaults to fp16 on CUDA, fp32 on CPU."""
    clip = clip_package()
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    path = Path(source).expanduser()
    if source in clip.available_models():
        model = _download(source, download_root)
    elif path.is_file():
        model = build_clip(_state_dict_from_file(path))
    else:
        raise ClipLoadError(
            f"--clip: expected one of {clip.available_models()} or a path to a checkpoint file, found {source!r}"
        )
    # build_model rounds the weights to fp16; hash them there, before any cast, so every device agrees.
    sha = weights_sha256(model)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return FrozenClip(model=model, source=source, sha256=sha)


def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE tokens, (P, context_length) int64, with SOT first and EOT (the largest id) last."""
    return clip_package().tokenize(texts, context_length=context_length, truncate=True).long()


def random_clip(arch: str = "tiny", seed: int = 0) -> nn.Module:
    """A CLIP with the named architecture and random weights (tests, benchmarks, the offline demo)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: expected one of {sorted(ARCHITECTURES)}, found {arch!r}")
    clip = clip_package()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = clip.model.CLIP(**ARCHITECTURES[arch])
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def save_random_clip(path: str | Path, arch: str = "tiny", seed: int = 0, fmt: str = "state_dict") -> Path:
    """Write a random CLIP as a state_dict file or as a traced TorchScript archive like OpenAI's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = random_clip(arch, seed)
    if fmt == "state_dict":
        torch.save(model.state_dict(), path)
    elif fmt == "torchscript":
        size = ARCHITECTURES[arch]["image_resolution"]
        image = torch.zeros(1, 3, size, size)
        text = torch.zeros(1, ARCHITECTURES[arch]["context_length"], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the archive matches OpenAI's format
            torch.jit.trace(model, (image, text), check_trace=False).save(str(path))
    else:
        raise ValueError(f"fmt: expected 'state_dict' or 'torchscript', found {fmt!r}")
    return path
