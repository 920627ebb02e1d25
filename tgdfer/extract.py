"""Stage 1: encode every clip's views with frozen CLIP once, into crash-safe HDF5 shards and one entry file.

Flow: read and validate the annotations (errors stop here, before any encoding) -> load CLIP -> cut the clips
into fixed shards of ``shard_clips`` annotation rows -> skip shards already committed with the same settings ->
decode clips in DataLoader workers (``tgdfer.data.views.ClipViews``) -> encode on the device in fixed batches that
never cross a shard -> commit each shard atomically -> when every shard exists, write the entry file and a
failures CSV beside it.

Under ``torchrun --nproc-per-node N`` rank r takes shards r, r+N, ...; all ranks meet at a barrier and rank 0
writes the entry. Because shards and batches are fixed by the annotation order alone, one process, N processes,
and a resumed run all write the same features.

Faults: each process locks the shards it plans (``tgdfer.locks``; rank 0 also the entry) before it touches them,
so a second extract to the same --out stops in one line naming the owner's pid, whatever the two jobs' rank
layouts; a rerun re-encodes any committed shard whose data fail their digest, removes dead writers' temporary
files, and a full disk stops the run in one line with the committed shards kept.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tgdfer import __version__
from tgdfer.atomic import is_disk_full, remove_stale_temporaries, write_text
from tgdfer.backbone import load_clip
from tgdfer.config import ExtractConfig
from tgdfer.data.datasets import read_annotations
from tgdfer.data.preprocess import augment_description, describe
from tgdfer.data.sampling import EVERY_FRAME_RULE, SAMPLING_RULE
from tgdfer.data.views import ClipJob, ClipViews, decode_loader, decode_workers, encode_frames
from tgdfer.devices import Ranks, dtype_name, ranks, resolve_device, resolve_dtype
from tgdfer.errors import BusyError, ExtractError
from tgdfer.features.cache import SCHEMAS, read_attrs
from tgdfer.features.frames import frame_shard, write_frame_entry, write_frame_shard
from tgdfer.features.store import FORMAT_VERSION, shard_data_problem, shard_dir, shard_header, shard_path
from tgdfer.features.views import ShardData, write_entry, write_shard
from tgdfer.locks import exclusive, lock_path
from tgdfer.progress import Progress


@dataclass
class _ShardBuffer:
    """Views of one shard as they are encoded."""

    index: int
    rows: list[int]
    features: list[torch.Tensor] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)  # uint8 frames not yet encoded, on the device
    pending_frames: int = 0
    meta: list[dict] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def _settings(cfg: ExtractConfig, annotations, clip, dtype: torch.dtype) -> dict:
    """Everything that changes the features; its hash decides whether a committed shard can be reused."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": annotations.dataset,
        "annotations_sha256": annotations.sha256(),
        "clip_sha256": clip.sha256,
        "frames": cfg.frames,
        "train_views": cfg.views,
        "seed": cfg.seed,
        "image_size": clip.image_size,
        "sampling": SAMPLING_RULE,
        "preprocess": describe(clip.image_size),
        "augment": augment_description(cfg.augment),
        "face_crop": cfg.face_crop,
        "shard_clips": cfg.shard_clips,
        "dtype": dtype_name(dtype),
        "batch_size": cfg.batch_size,  # batch composition changes the last bits of the features
    } | (
        {
            "layout": "frames",
            "max_frames": cfg.max_frames,
            "sampling": EVERY_FRAME_RULE,
            "passes": 1 + cfg.passes,
            "train_views": cfg.passes,  # the stored key (fingerprints stay): here it counts augmented passes
        }
        if cfg.frames_mode == "all"  # only here, so view caches keep their fingerprints
        else {}
    )


# The option a user changes for each stored setting, for a refused rerun's message.
_SETTING_FLAGS = {
    "dataset": "--dataset",
    "annotations_sha256": "the annotations (labels, paths, splits, --classes, --test-fraction, --val-fraction)",
    "clip_sha256": "--clip (weights sha256)",
    "frames": "--frames",
    "train_views": "--views",
    "seed": "--seed",
    "image_size": "CLIP input size",
    "face_crop": "--face-crop",
    "shard_clips": "--shard-clips",
    "dtype": "--precision",
    "batch_size": "--batch-size",
    "augment": "--set augment",
}


def _stored_settings(header: dict) -> dict:
    text = header.get("settings")
    text = text.decode() if isinstance(text, bytes) else text
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def _shown(value) -> str:
    text = str(value)
    text = text[:12] + "..." if len(text) > 40 else text  # hashes and long descriptions: enough to tell apart
    return repr(text) if isinstance(value, str) else text


def settings_diff(old: dict, new: dict) -> list[str]:
    """'--face-crop: False -> True' for every setting (or augment.* entry) that differs between two settings dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        flag = _SETTING_FLAGS.get(key, key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += [
                f"{flag}.{k}: {_shown(a.get(k))} -> {_shown(b.get(k))}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        else:
            changes.append(f"{flag}: {_shown(a)} -> {_shown(b)}")
    return changes


def _lock_outputs(entry: Path, mine: list[int], me: Ranks, held: contextlib.ExitStack, whole: bool) -> None:
    """Lock this rank's shards (and on rank 0 the entry) for the rest of the run; see the module docstring.

    A process that encodes one block of the shards (``whole`` False: --shard-range, --array-task) holds only its
    shards: blocks run at once, and the one that finds all shards committed writes the entry under its own lock.
    """
    if me.rank == 0 and whole:
        held.enter_context(exclusive(lock_path(entry), f"{entry}"))
        remove_stale_temporaries(entry.parent, entry.name)
        remove_stale_temporaries(entry.parent, f"{entry.stem}.failures.csv")
    for k in mine:
        held.enter_context(exclusive(lock_path(shard_path(entry, k)), f"{entry}: shard {k}"))


def _plan_shards(
    cfg: ExtractConfig,
    n_clips: int,
    me: Ranks,
    fingerprint: str,
    held: contextlib.ExitStack,
    settings: dict | None = None,
) -> tuple[list[int], list[int]]:
    """(shards this rank must encode, shards this rank finds already committed and sound); locks them in ``held``."""
    entry = Path(cfg.out)
    n_shards = max(1, math.ceil(n_clips / cfg.shard_clips))
    mine = list(shard_block(cfg, n_shards)[me.rank :: me.world])
    shard_dir(entry).mkdir(parents=True, exist_ok=True)
    whole = cfg.shard_range is None and cfg.array_tasks is None
    _lock_outputs(entry, mine, me, held, whole)
    if cfg.overwrite:
        for k in mine:
            shard_path(entry, k).unlink(missing_ok=True)
        if me.rank == 0:
            entry.unlink(missing_ok=True)
            for stale in shard_dir(entry).glob("shard-*.h5"):
                if int(stale.stem.split("-")[1]) >= n_shards:
                    stale.unlink()
    todo, done = [], []
    for k in mine:
        remove_stale_temporaries(shard_dir(entry), shard_path(entry, k).name)
        header = shard_header(shard_path(entry, k))
        if header is None:
            todo.append(k)
        elif header["fingerprint"] != fingerprint:
            changes = settings_diff(_stored_settings(header), json.loads(json.dumps(settings or {})))
            raise ExtractError(
                f"{shard_path(entry, k)} was made with other settings than this run's: "
                f"{'; '.join(changes) or 'unknown (a shard without its settings)'}. "
                "Pass --overwrite to redo it, or choose another --out"
            )
        elif (problem := shard_data_problem(shard_path(entry, k), SCHEMAS)) is not None:
            print(f"[rank {me.rank}] {shard_path(entry, k)} fails its check ({problem}): re-encoding it", flush=True)
            shard_path(entry, k).unlink()
            todo.append(k)
        else:
            done.append(k)
    return todo, done


def shard_block(cfg: ExtractConfig, n_shards: int) -> range:
    """The shards this process (all its ranks) encodes: all, ``shard_range`` A:B, or array task i's of n blocks.

    Blocks are contiguous and differ by at most one shard; a block past the shard count is empty.
    """
    if cfg.shard_range is not None:
        a, b = (int(x) for x in cfg.shard_range.split(":"))
        return range(min(a, n_shards), min(b, n_shards))
    if cfg.array_tasks is not None:
        i, n = cfg.array_task, cfg.array_tasks
        return range(i * n_shards // n, (i + 1) * n_shards // n)
    return range(n_shards)


def _write_when_complete(cfg: ExtractConfig, annotations, clip, settings: dict, n_shards: int) -> dict | None:
    """A block's end: write the entry if every shard is committed and no other process wrote it -> totals or None.

    An exclusive lock beside the shards makes the check-and-write one step, so of tasks ending together one writes
    and the others find its entry (same fingerprint) and leave it; the lock dies with its holder, so a rerun of
    any task after a crash writes the entry.
    """
    import fcntl

    entry = Path(cfg.out)
    missing = [k for k in range(n_shards) if shard_header(shard_path(entry, k)) is None]
    if missing:
        print(
            f"extract: {len(missing)} of {n_shards} shards not committed yet (e.g. {missing[:5]}); the process "
            "that commits the last one writes the entry",
            flush=True,
        )
        return None
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    with open(shard_dir(entry) / "entry.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if entry.exists() and read_attrs(entry).get("fingerprint") == fingerprint:
            print(f"extract: every shard is committed and {entry} was written by another process", flush=True)
            return None
        return _write_outputs(cfg, annotations, clip, settings, n_shards)


def _flush(buffer: _ShardBuffer, clip, batch_size: int, final: bool) -> None:
    """Encode the buffered frames in whole batches (and the remainder when ``final``)."""
    if not buffer.pending:
        return
    frames = torch.cat(buffer.pending) if len(buffer.pending) > 1 else buffer.pending[0]
    usable = len(frames) if final else (len(frames) // batch_size) * batch_size
    if usable:
        buffer.features.append(encode_frames(clip, frames[:usable], batch_size))
    rest = frames[usable:]
    buffer.pending = [rest] if len(rest) else []
    buffer.pending_frames = len(rest)


def _commit(buffer: _ShardBuffer, entry: Path, frames: int, dim: int, fingerprint: str, settings: dict) -> None:
    if settings.get("layout") == "frames":
        feats = torch.cat(buffer.features).cpu().numpy() if buffer.features else np.empty((0, dim), np.float16)
        data = frame_shard(buffer.index, feats, buffer.meta, buffer.failed, settings["passes"])
        write_frame_shard(shard_path(entry, buffer.index), data, fingerprint, settings)
        return
    feats = (torch.cat(buffer.features).cpu().numpy() if buffer.features else np.empty((0, dim), np.float16)).reshape(
        -1, frames, dim
    )
    meta = buffer.meta

    def cat(key: str, dtype, shape=(0,)) -> np.ndarray:
        return np.concatenate([m[key] for m in meta]).astype(dtype) if meta else np.empty(shape, dtype)

    data = ShardData(
        index=buffer.index,
        features=feats.astype(np.float16),
        view_row=np.concatenate([np.full(len(m["view_kind"]), m["row"]) for m in meta]).astype(np.int32)
        if meta
        else np.empty(0, np.int32),
        view_kind=cat("view_kind", np.int8),
        view_index=cat("view_index", np.int16),
        view_frames=cat("view_frames", np.int32, (0, frames)),
        clip_rows=np.array([m["row"] for m in meta], dtype=np.int32),
        num_frames=np.array([m["num_frames"] for m in meta], dtype=np.int32),
        failed_rows=np.array([r for r, _ in buffer.failed], dtype=np.int32),
        failed_reasons=tuple(reason for _, reason in buffer.failed),
        face_frames=np.array([_face_frames(m)[0] for m in meta], dtype=np.int32),
        sampled_frames=np.array([_face_frames(m)[1] for m in meta], dtype=np.int32),
    )
    if len(data.features) != len(data.view_row):
        raise ExtractError(
            f"shard {buffer.index}: {len(data.features)} encoded views for {len(data.view_row)} "
            "planned; this is a bug in tgdfer"
        )
    write_shard(shard_path(entry, buffer.index), data, fingerprint, settings)


def _face_frames(item: dict) -> tuple[int, int]:
    """(distinct sampled frames with a face found, distinct frames sampled) of one ClipViews item."""
    frames, found = np.asarray(item["view_frames"]), np.asarray(item["face_found"], dtype=bool)  # (V, T) each
    return len(np.unique(frames[found])), len(np.unique(frames))


def _encode_shards(cfg, annotations, clip, todo: list[int], fingerprint: str, settings: dict, me: Ranks) -> dict:
    entry = Path(cfg.out)
    rows_of = {
        k: list(range(k * cfg.shard_clips, min((k + 1) * cfg.shard_clips, len(annotations.clips)))) for k in todo
    }
    jobs = [ClipJob(r, annotations.clips[r].id, annotations.clips[r].path) for k in todo for r in rows_of[k]]
    dataset = ClipViews(
        jobs,
        cfg.frames,
        cfg.passes if cfg.frames_mode == "all" else cfg.views,
        cfg.seed,
        clip.image_size,
        cfg.augment,
        cfg.face_crop,
        every_frame=cfg.frames_mode == "all",
        max_frames=cfg.max_frames,
    )
    loader = decode_loader(
        dataset, decode_workers(cfg.workers, len(jobs), me.world), pin_memory=clip.device.type == "cuda"
    )
    unit = "views" if cfg.frames_mode == "views" else "passes"  # what an item's view_kind counts: T-frame views
    stats = {"clips": 0, unit: 0, "frames": 0, "failures": 0, "shards": len(todo)}  # or passes over every frame
    queue = list(todo)
    buffer = _ShardBuffer(queue[0], rows_of[queue[0]]) if queue else None
    remaining = len(buffer.rows) if buffer else 0
    start = time.perf_counter()
    bar = Progress(len(jobs), f"extract[{me.rank}]" if me.world > 1 else "extract")
    for item in loader:
        if item["error"] is not None:
            if cfg.strict:
                raise ExtractError(
                    f"{item['error']} (--strict stops at the first bad clip; without it bad clips "
                    "are skipped and listed)"
                )
            buffer.failed.append((item["row"], item["error"]))
            stats["failures"] += 1
        else:
            frames = item.pop("frames").to(clip.device, non_blocking=True)  # async from pinned memory
            buffer.pending.append(frames)
            buffer.pending_frames += len(frames)
            buffer.meta.append(item)
            stats["clips"] += 1
            stats[unit] += len(item["view_kind"])
            stats["frames"] += len(frames)
            if buffer.pending_frames >= cfg.batch_size:
                _flush(buffer, clip, cfg.batch_size, final=False)
        remaining -= 1
        bar.set_postfix(
            frames_s=f"{stats['frames'] / max(time.perf_counter() - start, 1e-9):.0f}",
            failed=stats["failures"],
        )
        bar.update(1)
        if remaining == 0:
            _flush(buffer, clip, cfg.batch_size, final=True)
            _commit(buffer, entry, cfg.frames, clip.dim, fingerprint, settings)
            queue.pop(0)
            if queue:
                buffer = _ShardBuffer(queue[0], rows_of[queue[0]])
                remaining = len(buffer.rows)
    bar.close()
    stats["seconds"] = time.perf_counter() - start
    return stats


def _write_outputs(cfg: ExtractConfig, annotations, clip, settings: dict, n_shards: int) -> dict:
    entry = Path(cfg.out)
    files = [shard_path(entry, k) for k in range(n_shards)]
    missing = [str(p) for p in files if shard_header(p) is None]
    if missing:
        raise ExtractError(
            f"cannot write {entry}: {len(missing)} shards are missing ({missing[:3]} ...); a rank "
            "failed? Rerun the same command to finish them"
        )
    attrs = {
        **settings,
        # a name clip can download again, or the absolute path of the file, so stage 2 finds the same weights
        "clip_model": cfg.clip
        if not Path(cfg.clip).expanduser().is_file()
        else str(Path(cfg.clip).expanduser().resolve()),
        "tgdfer_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
    }
    writer = write_frame_entry if settings.get("layout") == "frames" else write_entry
    totals = writer(entry, annotations, files, attrs)
    failures_csv = entry.with_name(f"{entry.stem}.failures.csv")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["id", "path", "reason"])
    writer.writerows(totals.pop("failed"))
    write_text(failures_csv, text.getvalue())
    totals["failures_csv"] = str(failures_csv)
    return totals


def _disk_full(exc: OSError, entry: Path) -> ExtractError:
    committed_shards = len(list(shard_dir(entry).glob("shard-*.h5")))
    return ExtractError(
        f"no space left on the device holding {exc.filename or entry.parent}; {committed_shards} shards are "
        f"committed in {shard_dir(entry)}, free space and rerun the same command (it keeps them)"
    )


def extract(cfg: ExtractConfig) -> dict:
    """Run stage 1 as configured; returns the summary figures (also printed as one line)."""
    try:
        with contextlib.ExitStack() as held:  # the output locks, released when the run ends however it ends
            return _extract(cfg, held)
    except OSError as exc:
        if is_disk_full(exc):
            raise _disk_full(exc, Path(cfg.out)) from None
        raise


def _entry_and_report(cfg, annotations, clip, settings: dict, n_shards: int, stats: dict, device, me: Ranks) -> dict:
    """After encoding, on rank 0: write the entry (when this process's block completes the cache) and print the
    summary line. Every rank gets the summary extract returns: its stats, and the entry's totals where written."""
    summary = dict(stats)
    if me.rank == 0 and len(shard_block(cfg, n_shards)) < n_shards:  # one block of several: README "Cluster"
        totals = _write_when_complete(cfg, annotations, clip, settings, n_shards)
        summary.update(totals=totals, entry=cfg.out if totals else None)
        secs, block = stats["seconds"], shard_block(cfg, n_shards)
        what = f"shards {block.start}..{block.stop - 1}" if block else "no shards (more blocks than shards)"
        held = f"; cache {cfg.out} holds {totals['clips']} clips" if totals else ""
        print(
            f"extract: {what} of {n_shards}: {stats['clips']} clips, {stats['frames']} frames, "
            f"{stats['failures']} failures encoded in {secs:.1f} s{held}",
            flush=True,
        )
    elif me.rank == 0:
        totals = _write_outputs(cfg, annotations, clip, settings, n_shards)
        summary.update(totals=totals, entry=cfg.out)
        secs, unit = stats["seconds"], "views" if "views" in stats else "passes"
        held = (
            f"{totals['views']} views"
            if "views" in totals
            else f"{totals['frames']} frames x {totals['passes']} passes"
        )
        print(
            f"extract: {stats['clips']} clips, {stats[unit]} {unit}, {stats['frames']} frames encoded, "
            f"{stats['failures']} failures in {secs:.1f} s ({stats['frames'] / max(secs, 1e-9):.0f} frames/s) on "
            f"{device} x{me.world}; cache {cfg.out} holds {totals['clips']} clips, {held}, "
            f"{totals['failures']} failures (listed in {totals['failures_csv']})",
            flush=True,
        )
    return summary


def _extract(cfg: ExtractConfig, held: contextlib.ExitStack) -> dict:
    me = ranks()  # frames, views, shard_clips and batch_size were checked by ExtractConfig itself
    if cfg.frames_mode == "views" and (cfg.max_frames or cfg.passes):
        raise ExtractError(
            f"max_frames and passes apply to a per-frame cache only: expected --frames all with them, found "
            f"frames_mode views with max_frames={cfg.max_frames}, passes={cfg.passes}"
        )
    annotations = read_annotations(
        cfg.dataset,
        cfg.root,
        cfg.annotations,
        classes=cfg.classes,
        test_fraction=cfg.test_fraction,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )
    if not annotations.clips:
        raise ExtractError(f"the {cfg.dataset} annotations under {cfg.root} list no clips")
    if me.rank == 0:
        for note in annotations.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
    if me.world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    device = resolve_device(cfg.device, me.local)
    dtype = resolve_dtype(cfg.precision, device)
    if me.world > 1 and me.rank > 0:
        torch.distributed.barrier()  # rank 0 downloads the weights first: clip writes the file in place
    clip = load_clip(cfg.clip, device, dtype, cfg.download_root)
    if me.world > 1 and me.rank == 0:
        torch.distributed.barrier()
    settings = _settings(cfg, annotations, clip, dtype)
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    n_shards = max(1, math.ceil(len(annotations.clips) / cfg.shard_clips))
    busy = None
    try:
        todo, done = _plan_shards(cfg, len(annotations.clips), me, fingerprint, held, settings)
    except BusyError as exc:
        busy = str(exc)
    if me.world > 1:  # every rank stops if one found its outputs taken (not only that rank, leaving the rest waiting)
        found = [None] * me.world
        torch.distributed.all_gather_object(found, busy)
        busy = next((b for b in found if b is not None), None)
    if busy is not None:
        raise BusyError(busy)
    if done:
        print(f"[rank {me.rank}] resuming: {len(done)} committed shards kept, {len(todo)} to encode", flush=True)
    stats = _encode_shards(cfg, annotations, clip, todo, fingerprint, settings, me)
    if me.world > 1:
        torch.distributed.barrier()
    summary = _entry_and_report(cfg, annotations, clip, settings, n_shards, stats, device, me)
    if me.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary
