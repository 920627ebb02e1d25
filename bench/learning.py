"""Learning that classifies and localises: does TG-DFER find a clip's expression frames from clip labels alone?

The project's own signal benchmark (issues 11, 23). Its generator (``tgdfer.testing.synthetic.write_burst_cache``) gives
features CLIP-like statistics: one strong shared direction (clips' mean pairwise cosine about 0.9), a per-clip
identity, per-frame noise; each clip's class shows only in one burst of consecutive frames of 16, some clips also
hold a shorter, weaker burst of another class, and classes follow DFEW's shares (disgust 1.2%). Two regimes
(``REGIMES``): "sparse", a burst of 2-5 frames (the hard case for localisation), and "dense", the expression held
over 8-16 frames, as in most DFEW clips. Caches go through the real cache writer and training through the real
``tgdfer.train.engine.fit_fold``, with a tiny random CLIP text tower (D = 32; the weights do not matter here: the class
signal is in the features).

For each reading of Eq. 7-11 (``READINGS``: the default and the alternatives, as ``--set`` overrides), regime and
seed it reports test WAR and UAR; the influence hit rate (the frame of highest influence for the true class lies in
the true burst; chance is about 0.22 sparse, 0.75 dense); Table 6's WAR when re-predicting from the 1 highest- and
the 1 lowest-influence frame (only those frames reach every module). Beside them, the baselines a reviewer asks for
(``BASELINES``): linear probes on mean-pooled, max-pooled and clip-centred max-pooled frames (each clip's mean frame
subtracted first, which removes the clip's identity), and gated attention MIL (Ilse et al. 2018) trained on the
same frames, whose hit rate is read from its attention. Every cell is the mean ± sd over seeds, with the worst
seed's WAR; each seed draws its own cache and initialisation.

    python bench/learning.py                                  # main readings, both regimes, seeds 1-5
    python bench/learning.py --readings default --regimes sparse --seeds 1,2 --baselines none   # a quick check
    python bench/learning.py --readings all --json table.json # every reading, the rows kept for docs/pages/learning.md

Targets for the default (issue 23), >= 5 seeds, each regime: mean WAR >= best probe + 5 and >= best reading - 1;
WAR sd <= 3 and no seed below the best probe; sparse: hit rate >= 0.85, highest-1 WAR >= lowest-1 WAR + 25.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Readings of Eq. 7-11 and of where influence is read, as --set overrides; each names every setting it depends on,
# so a reading means the same whatever the defaults (tgdfer/config.py) are.


def _temporal(mil: str, ctx: bool, *extra: str) -> tuple[str, ...]:
    """One stream on X^I (the paper as written): influence and prediction from it."""
    return ("model.instances=temporal", f"model.mil={mil}", f"model.class_specific_ctx={str(ctx).lower()}", *extra)


def _two(mil: str, bag: str, grad: str, ctx: bool, *extra: str) -> tuple[str, ...]:
    """Two streams (X^I and a per-frame map of X^v): influence from the frame stream, prediction by ``bag``."""
    return (
        "model.instances=both",
        f"model.mil={mil}",
        f"model.bag={bag}",
        f"model.frame_grad={grad}",
        f"model.class_specific_ctx={str(ctx).lower()}",
        *extra,
    )


READINGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "temporal-attn-shared": _temporal("attention", False),  # the default before issue 11
    "paper-temporal": _temporal("attention", True),
    "temporal-mean": _temporal("mean", True),
    "temporal-topk": _temporal("topk", True),
    "attn-tau-0.01": _temporal("attention", True, "model.attn_tau=0.01"),
    "two-stream-mean": _two("mean", "mean", "shared", True),  # the default of issue 11
    "two-stream-mean-shared": _two("mean", "mean", "shared", False),
    "two-stream-attn-shared": _two("attention", "mean", "shared", False),
    "temporal-bag": _two("attention", "temporal", "own", False),
    "ensemble-topk": _two("attention", "ensemble", "own", False, "model.frame_mil=topk"),
    "ensemble-mixed": _two("attention", "ensemble", "own", False, "model.frame_mil=mixed"),
    "frame-mixed": ("model.instances=frame", "model.frame_labels=enhanced"),
    "class-ctx": ("model.class_specific_ctx=true",),  # the default with one prompt context per class
    "n_ctx=4": ("model.n_ctx=4",),
    "n_ctx=16": ("model.n_ctx=16",),
}
MAIN = ("default", "temporal-attn-shared", "paper-temporal", "two-stream-mean", "two-stream-mean-shared")
REGIMES: dict[str, dict] = {"sparse": {"burst": (2, 5)}, "dense": {"burst": (8, 16)}}
BASELINES = ("probe-mean", "probe-max", "probe-centred-max", "gated-mil")
PROBES = ("probe-mean", "probe-max", "probe-centred-max")  # the trivial baselines the targets name


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int) -> np.ndarray:
    """Multinomial logistic regression (standardised inputs, L2 1e-3, L-BFGS): (n, D), (n,), (m, D) -> (m,) pred."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mu) / sd).float()
    y = torch.from_numpy(train_y).long()
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.from_numpy((test_x - mu) / sd).float() @ w + b).argmax(1).numpy()


class GatedAttentionMIL(nn.Module):
    """Ilse et al. 2018 (gated attention MIL): frame embedding, gated attention pooling over T, linear classifier.

    h_t = ReLU(E x_t); a = softmax_t(w . (tanh(V h_t) * sigmoid(U h_t))); logits = H (sum_t a_t h_t).
    """

    def __init__(self, dim: int, classes: int, hidden: int = 64):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.v, self.u, self.w = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> logits (B, C), attention (B, T)."""
        h = self.embed(x)  # (B, T, H)
        a = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1).softmax(1)  # (B, T)
        return self.head((a[:, :, None] * h).sum(1)), a  # (B, H) -> (B, C)


def gated_mil(train, y_train, test, classes: int, seed: int, epochs: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Train ``GatedAttentionMIL`` (Adam 5e-4, weight decay 1e-4 as Ilse et al.; batch 64) on (n, T, D) frames
    standardised with the train split's per-dimension mean and sd -> test predictions (m,), attention (m, T)."""
    torch.manual_seed(seed)
    mu, sd = train.mean((0, 1)), train.std((0, 1)) + 1e-6
    x, xt = torch.from_numpy((train - mu) / sd).float(), torch.from_numpy((test - mu) / sd).float()
    y = torch.from_numpy(y_train).long()
    model = GatedAttentionMIL(x.shape[2], classes)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x[idx])[0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits, attention = model(xt)
    return logits.argmax(1).numpy(), attention.numpy()


def war_uar(y: np.ndarray, pred: np.ndarray, classes: int) -> tuple[float, float]:
    from tgdfer.train.metrics import scores

    s = scores(y, pred, classes)
    return s.war, s.uar


def baselines(data, truth: np.ndarray, names: list[str], seed: int) -> dict[str, dict]:
    """The baselines on every train view, tested on the test views -> {name: {"war", "uar"[, "hit"]}}."""
    train = data.features[data.train_choices.flatten()].float().numpy()  # (n*K, T, D)
    test = data.features[data.test_rows].float().numpy()  # (m, T, D)
    y_train = data.train_labels.repeat_interleave(data.train_choices.shape[1]).numpy()
    y = data.test_labels.numpy()
    classes = len(data.class_names)
    pools = {
        "probe-mean": lambda a: a.mean(1),
        "probe-max": lambda a: a.max(1),
        "probe-centred-max": lambda a: (a - a.mean(1, keepdims=True)).max(1),  # each clip's mean frame removed
    }
    out = {}
    for name in names:
        if name in pools:
            war, uar = war_uar(y, probe(pools[name](train), y_train, pools[name](test), classes), classes)
            out[name] = {"war": war, "uar": uar}
        else:
            pred, attention = gated_mil(train, y_train, test, classes, seed)
            war, uar = war_uar(y, pred, classes)
            out[name] = {
                "war": war,
                "uar": uar,
                "hit": float(truth[data.test_rows.numpy(), attention.argmax(1)].mean()),
            }
    return out


def run_reading(cache: str, truth: np.ndarray, overrides: tuple[str, ...], seed: int, epochs: int, out: Path):
    """Train one reading with the real ``fit_fold``; -> WAR, UAR, hit rate, highest-1 / lowest-1 WAR, seconds."""
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.features.cache import load_cache
    from tgdfer.model.inference import predict_features
    from tgdfer.train.engine import evaluate, fit_fold
    from tgdfer.train.runs import load_run
    from tgdfer.train.splits import fold_data

    milestones = f"{round(epochs * 0.6)},{round(epochs * 0.8)}"  # §4.2's 30/40 of 50, scaled
    base = (f"train.epochs={epochs}", f"train.seed={seed}", "train.eval_every=0", f"optim.milestones={milestones}")
    cfg = apply_overrides(RunConfig(features=cache, out=str(out), device="cpu"), [*base, *overrides])
    t0 = time.perf_counter()
    metrics = fit_fold(cfg, log=lambda s: None)
    seconds = time.perf_counter() - t0
    run = load_run(out, device="cpu")
    data = fold_data(load_cache(cache), "1", torch.device("cpu"))
    y = data.test_labels.numpy()
    influence = predict_features(run.model, data.features[data.test_rows], amp=False)["scores"].numpy()
    top = influence[np.arange(len(y)), :, y].argmax(1)  # (m,) frame of highest influence for the true class
    hit = float(truth[data.test_rows.numpy(), top].mean())
    hi = evaluate(run.model, data, amp=False, select=("highest", 1)).war
    lo = evaluate(run.model, data, amp=False, select=("lowest", 1)).war
    return {
        "war": metrics["war"],
        "uar": metrics["uar"],
        "hit": hit,
        "hi1": hi,
        "lo1": lo,
        "seconds": seconds,
        "run": str(out),
    }


def _arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--readings",
        default="main",
        help=f"comma-separated, main ({','.join(MAIN)}), all or none: {', '.join(READINGS)}",
    )
    p.add_argument("--regimes", default="sparse,dense", help=f"comma-separated: {', '.join(REGIMES)}")
    p.add_argument("--baselines", default="all", help=f"comma-separated, all or none: {', '.join(BASELINES)}")
    p.add_argument("--seeds", default="1,2,3,4,5", help="each seed draws its own cache and initialisation")
    p.add_argument("--clips", type=int, default=2000, help="clips per cache; fold 1 tests on 1/5 of them")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--views", type=int, default=4, help="train views per clip")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every reading")
    p.add_argument("--work", default=None, help="folder for caches and runs (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write every seed's figures here")
    p.add_argument("--merge", nargs="+", default=None, help="run nothing: print the table of these --json files")
    args = p.parse_args()
    args.readings = _choose(p, "--readings", args.readings, READINGS, {"main": MAIN})
    args.regimes = _choose(p, "--regimes", args.regimes, REGIMES, {})
    args.baselines = _choose(p, "--baselines", args.baselines, BASELINES, {})
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def _choose(p: argparse.ArgumentParser, flag: str, text: str, known, groups: dict) -> list[str]:
    named = {"all": list(known), "none": [], **{k: list(v) for k, v in groups.items()}}
    names = named[text] if text in named else text.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"{flag}: expected some of {list(known)}, found {unknown}")
    return names


def main() -> None:
    args = _arguments()
    if args.merge:
        rows, args = merged(args.merge)
    else:
        rows = run_all(args)
        if args.json:
            flat = [{"regime": g, "reading": n, "seed": s, **r} for (g, n), by in rows.items() for s, r in by.items()]
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": flat}, indent=1))
    print(table(rows, args))


def run_all(args: argparse.Namespace) -> dict[tuple[str, str], dict[int, dict]]:
    """Every regime x seed: one cache, the baselines, each reading -> (regime, name) -> seed -> figures."""
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.features.cache import load_cache
    from tgdfer.testing.synthetic import write_burst_cache
    from tgdfer.train.splits import fold_data

    torch.set_num_threads(args.threads)
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        clip_path = save_random_clip(work / "tiny-clip.pt", "tiny", seed=0)
        sha = load_clip(str(clip_path)).sha256
        for regime in args.regimes:
            for seed in args.seeds:
                cache = work / f"bursts-{regime}-{seed}-{args.clips}.h5"
                info = write_burst_cache(
                    cache, str(clip_path), sha, n_clips=args.clips, views=args.views, seed=seed, **REGIMES[regime]
                )
                data = fold_data(load_cache(cache), "1", torch.device("cpu"))
                for name, r in baselines(data, info["burst"], args.baselines, seed).items():
                    rows.setdefault((regime, name), {})[seed] = r
                for name in args.readings:
                    out = work / f"run-{regime}-{name}-{seed}-{time.monotonic_ns()}"
                    overrides = (*READINGS[name], *args.overrides)
                    r = run_reading(str(cache), info["burst"], overrides, seed, args.epochs, out)
                    rows.setdefault((regime, name), {})[seed] = r
                    print(
                        f"{regime} seed {seed} {name:<22} WAR {r['war']:5.1f} UAR {r['uar']:5.1f} hit {r['hit']:.2f} "
                        f"hi1 {r['hi1']:5.1f} lo1 {r['lo1']:5.1f} ({r['seconds']:.0f} s)",
                        flush=True,
                    )
    return rows


def merged(paths: list[str]) -> tuple[dict[tuple[str, str], dict[int, dict]], argparse.Namespace]:
    """Rows of earlier ``--json`` files (a later file wins for the same regime, name and seed), and the settings
    for the table's header. Runs made with other clips, views or epochs are refused."""
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    first = None
    for path in paths:
        saved = json.loads(Path(path).read_text())
        setting = {k: saved["args"][k] for k in ("clips", "views", "epochs")}
        first = first or setting
        if setting != first:
            raise SystemExit(f"--merge: {path} was run with {setting}, {paths[0]} with {first}; merge like runs only")
        for r in saved["rows"]:
            rows.setdefault((r["regime"], r["reading"]), {})[r["seed"]] = r
    rows = dict(sorted(rows.items(), key=lambda kv: list(REGIMES).index(kv[0][0])))
    seeds = sorted({s for by in rows.values() for s in by})
    regimes = [g for g in REGIMES if any(k[0] == g for k in rows)]
    return rows, argparse.Namespace(**first, seeds=seeds, regimes=regimes)


def _ms(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"


def table(rows: dict[tuple[str, str], dict[int, dict]], args) -> str:
    """The markdown table (mean ± sd over seeds, worst seed's WAR) and the targets' verdicts per regime."""
    lines = [
        "",
        f"bench/learning.py: {args.clips} clips ({args.clips // 5} test), T=16, {args.views} train views, "
        f"{args.epochs} epochs, seeds {','.join(map(str, args.seeds))} (mean ± sd over seeds)",
        "",
        "| regime | reading | WAR | worst WAR (seed) | UAR | hit rate | highest-1 WAR | lowest-1 WAR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (regime, name), by_seed in rows.items():
        rs = list(by_seed.values())
        worst = min(by_seed, key=lambda s: by_seed[s]["war"])
        cells = [
            _ms([r[k] for r in rs if k in r], ".2f" if k == "hit" else ".1f")
            for k in ("war", "uar", "hit", "hi1", "lo1")
        ]
        label = name if name in BASELINES else f"{name} `{' '.join(READINGS[name]) or 'defaults'}`"
        lines.append(
            f"| {regime} | {label} | {cells[0]} | {by_seed[worst]['war']:.1f} ({worst}) | "
            + " | ".join(cells[1:])
            + " |"
        )
    for regime in args.regimes:
        lines += _targets(regime, {n: by for (g, n), by in rows.items() if g == regime})
    return "\n".join(lines)


def _targets(regime: str, rows: dict[str, dict[int, dict]]) -> list[str]:
    """Issue 23's targets for the default in one regime, each with its figures and verdict."""
    if "default" not in rows:
        return []
    war = [r["war"] for r in rows["default"].values()]
    mean = float(np.mean(war))
    probes = [float(np.mean([r["war"] for r in rows[n].values()])) for n in PROBES if n in rows]
    best_probe = max(probes) if probes else float("nan")
    best_reading = max(float(np.mean([r["war"] for r in by.values()])) for n, by in rows.items() if n in READINGS)
    checks = [
        (f"WAR {mean:.1f} >= best probe {best_probe:.1f} + 5", mean >= best_probe + 5),
        (f"WAR {mean:.1f} >= best reading {best_reading:.1f} - 1", mean >= best_reading - 1),
        (f"WAR sd {np.std(war):.1f} <= 3", np.std(war) <= 3),
        (f"worst seed {min(war):.1f} >= best probe {best_probe:.1f}", min(war) >= best_probe),
    ]
    if regime == "sparse":
        hit = float(np.mean([r["hit"] for r in rows["default"].values()]))
        gap = float(np.mean([r["hi1"] - r["lo1"] for r in rows["default"].values()]))
        checks += [(f"hit rate {hit:.2f} >= 0.85", hit >= 0.85), (f"highest-1 - lowest-1 {gap:.1f} >= 25", gap >= 25)]
    return ["", f"targets, {regime} (default): " + "; ".join(f"{text}: {'yes' if ok else 'NO'}" for text, ok in checks)]


if __name__ == "__main__":
    main()
