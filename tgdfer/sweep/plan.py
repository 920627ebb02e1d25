"""What a sweep trains: its folds and seeds from the command line, and a key per distinct run.

A run is keyed (``run_key``) by a hash of its resolved RunConfig (less ``out`` and ``device``, which do not change
what is learnt) and the cache's fingerprint, and lives in ``<out>/runs/<key>/``; ``plan_runs`` turns a table's rows
x folds x seeds into those runs, so identical settings are trained once across rows and tables.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from tgdfer.config import RunConfig, apply_overrides, to_dict
from tgdfer.errors import ConfigError
from tgdfer.features.cache import folds_of
from tgdfer.sweep.tables import Row, Table

Jobs = dict[str, tuple[RunConfig, str]]  # {run key: (config, label)}: the distinct runs of a sweep


def _int_list(text: str, what: str) -> list[int]:
    """'1-3' or '1,2,3' (or a mix, '1-2,5') -> [1, 2, 3]."""
    values: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        try:
            if "-" in part.lstrip("-"):
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                values += range(lo, hi + 1)
            else:
                values.append(int(part))
        except ValueError:
            raise ConfigError(f"--{what}: expected numbers or ranges such as 1-5 or 1,3, found {text!r}") from None
    return list(dict.fromkeys(values))


def parse_folds(text: str | None, features: str | None = None) -> list[str] | None:
    """'1-5' -> ['1'..'5'], '1,3' -> ['1', '3']; 'all' or None -> every split of ``features`` (None without it)."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return folds_of(features, "all") if features else None
    return [str(k) for k in _int_list(text, "folds")]


def parse_seeds(text: str) -> list[int]:
    """'1,2,3' or '1-3' -> [1, 2, 3]."""
    return _int_list(text, "seeds")


def run_key(cfg: RunConfig, fingerprint: str) -> str:
    """12 hex digits naming a run: its settings (less out and device) and the cache's contents."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "device")}
    text = json.dumps({"config": settings, "fingerprint": fingerprint}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(cfg: RunConfig) -> str:
    """Settings that differ from `tgdfer train`'s defaults, as --set strings."""
    ours, base = to_dict(cfg), to_dict(RunConfig())
    changed = [f"clip={ours['clip']}"] if ours["clip"] != base["clip"] else []
    for section in ("model", "optim", "train"):
        changed += [f"{section}.{k}={v}" for k, v in ours[section].items() if v != base[section][k]]
    return " ".join(changed) or "(defaults)"


def plan_runs(
    spec: Table, rows: list[Row], features: str, fingerprint: str, folds, seeds, out: Path, overrides, device
):
    """Every (row, fold, seed) entry and the distinct runs behind them: ([entry], {key: (config, label)}).

    Identical settings are one run: Table 6 rows share one trained run, and twins across tables share a key."""
    plan, configs, names = [], {}, {}
    for row in rows:
        for fold in folds:
            for seed in seeds:
                base = RunConfig(features=str(features), fold=fold, device=device)
                cfg = apply_overrides(base, [f"train.seed={seed}", *row.overrides, *overrides])
                key = run_key(cfg, fingerprint)
                configs[key] = replace(cfg, out=str(out / "runs" / key))
                name = "default" if spec.evaluates else row.label  # Table 6 rows share one trained run
                names[key] = [*names.get(key, []), *([name] if name not in names.get(key, []) else [])]
                plan.append({"row": row, "fold": fold, "seed": seed, "run_dir": Path(configs[key].out)})
    label = "table{} {} fold{} seed{}"
    jobs = {k: (c, label.format(spec.number, ",".join(names[k]), c.fold, c.train.seed)) for k, c in configs.items()}
    return plan, jobs
