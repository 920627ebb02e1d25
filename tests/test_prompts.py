"""Text prompts: the truncated tower is exact; only the context trains; fixed prompts are encoded once."""

import pytest
import torch

from tgdfer.backbone import tokenize
from tgdfer.labels import CLASS_NAMES, fixed_prompts, prompt_bodies
from tgdfer.model.prompts import PromptSet, TextPrompts, TextTower


@pytest.fixture()
def tower(tiny_clip_path):
    from tgdfer.backbone import load_clip

    return TextTower(load_clip(str(tiny_clip_path)).model)


def test_truncated_tower_equals_clip_over_all_77_tokens(tower, tiny_clip_path):
    from tgdfer.backbone import load_clip

    clip = load_clip(str(tiny_clip_path)).model
    texts = fixed_prompts(CLASS_NAMES["dfew"], "descriptors") + fixed_prompts(CLASS_NAMES["dfew"], "class")
    tokens = tokenize(texts)
    reference = clip.encode_text(tokens)  # OpenAI's own forward over 77 tokens
    embeds = clip.token_embedding(tokens)
    eot = tokens.argmax(-1)
    assert int(eot.max()) + 1 < 40  # the truncation is real
    ours = tower(embeds, eot)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)
    # and with gradients through the embeddings (the learnable-context path)
    embeds = embeds.detach().requires_grad_(True)
    tower(embeds, eot).sum().backward()
    assert embeds.grad[:, int(eot.max()) + 1 :].abs().sum() == 0  # tokens after the last EOT play no part


@pytest.mark.parametrize("class_specific", [False, True])
def test_only_context_trains(tower, class_specific):
    names = CLASS_NAMES["dfew"]
    fine = PromptSet(
        tower,
        prompt_bodies(names, "descriptors"),
        fixed_prompts(names, "descriptors"),
        True,
        8,
        class_specific,
    )
    coarse = PromptSet(tower, prompt_bodies(names, "class"), fixed_prompts(names, "class"), True, 8, class_specific)
    prompts = TextPrompts(tower, fine, coarse)
    xfp, xcp = prompts()
    assert xfp.shape == xcp.shape == (7, tower.text_projection.shape[1])
    assert torch.allclose(xfp.norm(dim=-1), torch.ones(7), atol=1e-5)
    (xfp.sum() + xcp.sum()).backward()
    assert fine.ctx.shape == ((7 if class_specific else 1), 8, tower.width)
    assert fine.ctx.grad is not None and fine.ctx.grad.abs().sum() > 0 and coarse.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())
    trainable = {n for n, p in prompts.named_parameters() if p.requires_grad}
    assert trainable == {"fine.ctx", "coarse.ctx"}


def test_fixed_prompts_are_encoded_once(tower, monkeypatch):
    names = CLASS_NAMES["mafw"]
    fine = PromptSet(tower, prompt_bodies(names, "descriptors"), fixed_prompts(names, "descriptors"), False, 8, False)
    coarse = PromptSet(tower, prompt_bodies(names, "class"), fixed_prompts(names, "class"), False, 8, False)
    prompts = TextPrompts(tower, fine, coarse)
    calls = []
    monkeypatch.setattr(TextTower, "forward", lambda *a: calls.append(1))
    xfp, _xcp = prompts()
    assert calls == [] and xfp.shape == (11, tower.text_projection.shape[1]) and not xfp.requires_grad
