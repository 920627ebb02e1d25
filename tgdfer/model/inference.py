"""Running a trained TG-DFER on frame features: probabilities, per-frame influence, and Table 6's re-prediction.

Used by evaluation (``tgdfer.train.engine.evaluate``), by ``tgdfer predict``/``explain`` and by the sweeps; it needs
a model and features, never the trainer.
"""

from __future__ import annotations

import torch

from tgdfer.devices import autocast
from tgdfer.errors import ConfigError
from tgdfer.model.network import TGDFER


@torch.inference_mode()
def predict_features(
    model: TGDFER,
    features: torch.Tensor,
    amp: str = "auto",
    batch_size: int = 1024,
    select: tuple[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the model on (N, T, D) features -> {"probs": (N, C), "scores": (N, T, C), "mask": (N, T) bool}.

    ``select=("highest"|"lowest", k)`` re-predicts from only the k frames with the highest or lowest influence
    on the full-clip prediction (Table 6); ``mask`` says which frames were used. The other frames reach no module
    of the re-prediction (``TGDFER.forward`` masks them as attention keys and in every pooling), so it is the
    prediction from those k frames alone.
    """
    model.eval()
    device = features.device
    probs, frame_scores, masks = [], [], []
    for start in range(0, len(features), batch_size):
        x = features[start : start + batch_size].float()
        with autocast(device, amp):
            out = model(x)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
            if select is not None:
                order, k = select
                if order not in ("highest", "lowest") or not 1 <= k <= x.shape[1]:
                    raise ConfigError(f"select: expected ('highest'|'lowest', 1..{x.shape[1]}), found {select}")
                pred = out.logits.argmax(1)
                influence = out.scores[torch.arange(len(x), device=device), :, pred]  # (B, T) for the prediction
                chosen = influence.topk(k, dim=1, largest=order == "highest").indices
                mask = torch.zeros_like(mask).scatter_(1, chosen, True)
                out = model(x, frame_mask=mask)
        probs.append(out.logits.float().softmax(-1))
        frame_scores.append(out.scores.float())
        masks.append(mask)
    return {"probs": torch.cat(probs), "scores": torch.cat(frame_scores), "mask": torch.cat(masks)}
