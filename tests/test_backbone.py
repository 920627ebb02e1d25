"""The CLIP loader: both checkpoint formats, frozen, explicit dtype, weights hash, clear errors."""

import subprocess
import sys

import pytest
import torch

from tgdfer.backbone import ClipLoadError, load_clip, tokenize, weights_sha256


def test_state_dict_and_torchscript_load_to_the_same_model(tiny_clip_path, tiny_clip_torchscript):
    a, b = load_clip(str(tiny_clip_path)), load_clip(str(tiny_clip_torchscript))
    assert a.sha256 == b.sha256
    x = torch.randn(2, 3, a.image_size, a.image_size)
    assert torch.equal(a.encode_images(x), b.encode_images(x))


def test_loaded_clip_is_frozen_eval_and_has_the_asked_dtype(tiny_clip_path):
    clip = load_clip(str(tiny_clip_path))
    assert clip.dtype == torch.float32 and not clip.model.training
    assert not any(p.requires_grad for p in clip.model.parameters())
    half = load_clip(str(tiny_clip_path), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half.sha256 == clip.sha256  # the hash is taken before the cast
    assert clip.encode_images(torch.randn(3, 3, 224, 224)).shape == (3, clip.dim)


def test_hash_follows_the_weights(tiny_clip_path):
    clip = load_clip(str(tiny_clip_path))
    before = weights_sha256(clip.model)
    with torch.no_grad():
        clip.model.text_projection[0, 0] += 1
    assert weights_sha256(clip.model) != before


def test_unknown_source_names_the_choices(tmp_path):
    with pytest.raises(ClipLoadError, match=r"ViT-B/32.*found 'no-such-model'"):
        load_clip("no-such-model")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ClipLoadError, match="expected a CLIP state_dict"):
        load_clip(str(bad))


def test_tokenize_puts_eot_last():
    tokens = tokenize(["a face showing happiness.", "x"])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 77)
    assert tokens[0].argmax() == (tokens[0] != 0).sum() - 1


@pytest.mark.integration
def test_clip_imports_without_leaving_a_fake_pkg_resources():
    """openai-clip 1.0.1 imports pkg_resources, which setuptools >= 82 lacks; the stand-in must not linger."""
    code = (
        "import importlib.util, sys\n"
        "had = importlib.util.find_spec('pkg_resources') is not None\n"
        "from tgdfer.backbone import available_models\n"
        "assert 'ViT-B/32' in available_models()\n"
        "mod = sys.modules.get('pkg_resources')\n"
        "assert had or mod is None, mod\n"
        "print('pkg_resources present' if had else 'stand-in used')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("pkg_resources present", "stand-in used")


@pytest.mark.integration
def test_an_installed_pkg_resources_is_used_not_shadowed(tmp_path):
    """With an older setuptools, clip must import the real pkg_resources and tgdfer must leave it in place."""
    (tmp_path / "pkg_resources.py").write_text("import packaging, packaging.version\nREAL = True\n")
    code = (
        "import sys\n"
        "from tgdfer.backbone import available_models\n"
        "available_models()\n"
        "assert getattr(sys.modules['pkg_resources'], 'REAL', False)\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)


def test_loader_builds_the_module_clip_build_model_builds(tiny_clip_path, tiny_clip_torchscript):
    """load_clip's meta-device build gives build_model's weights, dtypes and hash, and a working text tower (its
    causal mask is rebuilt off the meta device), from both file formats."""
    from tgdfer.backbone import build_clip, clip_package

    reference = clip_package().model.build_model(torch.load(tiny_clip_path, weights_only=True))
    want = {k: v.clone() for k, v in reference.state_dict().items()}
    sha = weights_sha256(reference)
    built = build_clip(torch.load(tiny_clip_path, weights_only=True))
    got = built.state_dict()
    assert sorted(got) == sorted(want)
    assert {got[k].dtype for k in want} == {torch.float16, torch.float32}  # build_model's mix, not all fp32
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    assert weights_sha256(built) == sha
    assert not any(t.is_meta for t in [*built.parameters(), *built.buffers()])
    tokens = tokenize(["a face showing happiness.", "x"])
    text = reference.float().encode_text(tokens)
    for path in (tiny_clip_path, tiny_clip_torchscript):
        clip = load_clip(str(path))
        assert clip.sha256 == sha
        assert torch.equal(clip.model.encode_text(tokens), text)


def test_image_tower_cast_keeps_layernorms_fp32_and_dropping_text_keeps_dim(tiny_clip_path):
    from tgdfer.backbone import cast_image_tower, drop_text_tower

    ref = load_clip(str(tiny_clip_path))
    clip = load_clip(str(tiny_clip_path))
    cast_image_tower(clip.model, torch.bfloat16)
    visual = clip.model.visual
    assert clip.dtype == torch.bfloat16 and visual.proj.dtype == torch.bfloat16
    assert visual.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.bfloat16
    assert visual.ln_pre.weight.dtype == visual.ln_post.weight.dtype == torch.float32
    assert clip.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32  # the text tower untouched
    x = torch.randn(4, 3, 224, 224)
    a, b = ref.encode_images(x), clip.encode_images(x).float()
    assert b.dtype == torch.float32 and 0 < (a - b).abs().max() < 0.05 * a.abs().max()
    before = sum(p.numel() for p in clip.model.parameters())
    drop_text_tower(clip.model)
    text = sum(p.numel() for p in ref.model.transformer.parameters()) + ref.model.token_embedding.weight.numel()
    assert sum(p.numel() for p in clip.model.parameters()) == before - text
    assert clip.dim == ref.dim and clip.context_length == 77
    assert torch.equal(clip.encode_images(x), clip.encode_images(x))
