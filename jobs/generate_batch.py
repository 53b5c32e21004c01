"""``mirage generate-batch``: a prompt set -> one generated video per item, with metrics, on Ray Data.

The driver reads the prompt set (JSONL or CSV; local or ``s3://``), skips the items a previous run
finished (an item is done iff ``<output>/<id>/metrics.json`` exists), and streams the rest through

    from_items(pending) -> map_batches(GeneratorActor, batch_size=1, ActorPoolStrategy(1..concurrency))

Each actor loads the generator (+ memory branch + LoRA) once in ``__init__``. Per item it validates
and loads the inputs (a bad item becomes a ``failed`` record with a reason, it never stops the
batch), generates, measures (revisit PSNR / SSIM, seconds per frame, cache size per chunk) and
publishes ``<output>/<id>/{video.mp4, cameras.txt, chunks.json, metrics.json}``: every file via a
temporary name and a rename (``pipeline.storage``), ``metrics.json`` last, so its presence is the
commit marker that makes re-runs skip the item. Actors return one small row per item (never frames).

Finally the driver writes ``<output>/manifest.jsonl`` (one line per prompt-set line, atomically),
logs an MLflow run (flattened config as params; means over ok items as metrics; a results table
and the first K videos as artifacts) and returns a summary.

Failure reasons: ``bad_item`` (schema), ``duplicate_id``, ``too_few_frames``, ``bad_frames_count``,
``missing_image``, ``bad_image``, ``missing_camera_file``, ``bad_camera_file``, ``nan_cameras``,
``bad_trajectory_params``, ``generation_error``, ``write_error``, ``worker_error``.
Note: skipping is by id only; change the output prefix to regenerate with other settings.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from jobs.accounting import SUMMARY_FILE, job_summary, summary_metrics, write_summary
from jobs.config import (
    PRESET_TRAJECTORIES,
    SYNTHETIC_IMAGE,
    GenerateBatchConfig,
    GeneratorModelConfig,
    PromptItem,
)
from jobs.ray_runtime import collect, init_ray
from jobs.tracking import Tracker
from pipeline import storage
from pipeline.stages import peak_rss_mib

log = logging.getLogger(__name__)

ITEM_FILES = {"video": "video.mp4", "cameras": "cameras.txt", "chunks": "chunks.json"}
METRICS_FILE = "metrics.json"
MANIFEST_NAME = "manifest.jsonl"
ROW_KEYS = ("id", "status", "reason", "record", "actor_pid", "model_loads", "rss_mib", "busy_s")
MIN_FRAMES, FRAME_STRIDE = 33, 32

_FIXED_PARAMS = {"n_frames", "image_size", "K"}  # set by the job, not by trajectory_params


class ItemError(Exception):
    """A per-item failure: ``reason`` is a stable keyword, ``message`` names the input."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ----------------------------------------------------------------------------------------------
# Prompt set
# ----------------------------------------------------------------------------------------------
def _parent_uri(uri: str) -> str:
    if storage.is_s3(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(str(storage.local_path(uri)))


def _resolve(ref: str, base: str) -> str:
    """A path/URI from the prompt set: absolute and ``s3://`` as given, relative against ``base``."""
    if storage.is_s3(ref) or ref.startswith("file://") or os.path.isabs(ref):
        return ref
    return storage.join_uri(base, ref)


def _parse_rows(uri: str, text: str) -> list[tuple[int, Any]]:
    """``(line number, raw row)`` pairs of a JSONL or CSV prompt set."""
    lower = uri.lower()
    if lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        return [(reader.line_num, row) for row in reader]
    if not lower.endswith((".jsonl", ".ndjson")):
        raise ValueError(f"{uri}: prompt set must be .jsonl or .csv")
    rows: list[tuple[int, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            rows.append((lineno, ValueError(f"invalid JSON ({exc})")))
    return rows


def failed_record(item_id: str, reason: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"id": item_id, "status": "failed", "reason": reason, "message": message, "line": line,
            "outputs": {}, "metrics": {}}


def read_prompt_set(uri: str, options: storage.StorageOptions | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Valid items (paths resolved against the prompt file's folder) and failed records for the
    lines that are not (schema errors, duplicate ids). FileNotFoundError if the file is missing."""
    text = storage.read_bytes(uri, options).decode("utf-8-sig")
    base = _parent_uri(str(uri))
    items: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lineno, raw in _parse_rows(str(uri), text):
        where = f"{uri}:{lineno}"
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        fallback_id = str(raw_id) if isinstance(raw_id, (str, int)) and str(raw_id) else f"line-{lineno}"
        if isinstance(raw, Exception):
            rejected.append(failed_record(fallback_id, "bad_item", f"{where}: {raw}", lineno))
            continue
        if not isinstance(raw, dict):
            rejected.append(failed_record(fallback_id, "bad_item", f"{where}: expected a JSON object", lineno))
            continue
        try:
            item = PromptItem.model_validate(raw)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
            rejected.append(failed_record(fallback_id, "bad_item", f"{where}: {errors}", lineno))
            continue
        if item.id in seen:
            rejected.append(failed_record(item.id, "duplicate_id", f"{where}: id {item.id!r} appears earlier", lineno))
            continue
        seen.add(item.id)
        row = item.model_dump()
        if row["image"] != SYNTHETIC_IMAGE:
            row["image"] = _resolve(row["image"], base)
        if row["trajectory"] not in PRESET_TRAJECTORIES:
            row["trajectory"] = _resolve(row["trajectory"], base)
        row["line"] = lineno
        items.append(row)
    return items, rejected


# ----------------------------------------------------------------------------------------------
# Per item: inputs (run inside the actors; pure functions so they can be tested without Ray)
# ----------------------------------------------------------------------------------------------
def check_frames(frames: int, item_id: str) -> int:
    """Generation needs 33 + 32k frames (docs/method.md §5)."""
    if frames < MIN_FRAMES:
        raise ItemError("too_few_frames", f"{item_id}: frames={frames}; generation needs at least {MIN_FRAMES}")
    if (frames - MIN_FRAMES) % FRAME_STRIDE:
        raise ItemError("bad_frames_count", f"{item_id}: frames={frames} is not 33 + 32k (33, 65, 97, ...)")
    return frames


def _is_nan_error(text: str) -> bool:
    return bool(re.search(r"non-finite|not finite|\bnan\b|\binf\b", text, re.IGNORECASE))


def fetch_local(uri: str, options: storage.StorageOptions | None, workdir: str, what: str, reason: str) -> str:
    """A local path for ``uri`` (an ``s3://`` file or prefix is downloaded under ``workdir``, keeping
    its name so that format detection by extension still works). ItemError(reason) when missing."""
    if not storage.is_s3(uri):
        path = str(storage.local_path(uri))
        if not os.path.exists(path):
            raise ItemError(reason, f"{what} {uri} does not exist")
        return path
    fs, path = storage.filesystem(uri, options)
    if not fs.exists(path):
        raise ItemError(reason, f"{what} {uri} does not exist")
    dest = os.path.join(workdir, storage.basename(uri))
    if fs.isdir(path):
        for f in fs.find(path):
            target = os.path.join(dest, *f[len(path):].strip("/").split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(f, target)
    else:
        fs.get_file(path, dest)
    return dest


def build_trajectory(item: dict[str, Any], config: GenerateBatchConfig, workdir: str,
                     options: storage.StorageOptions | None = None):
    """The item's cameras at the generation size with exactly ``frames`` frames."""
    from mirage_model.geometry import formats, trajectory

    size = (config.height, config.width)
    item_id = item["id"]
    frames = check_frames(int(config.frames if item["frames"] is None else item["frames"]), item_id)
    name = item["trajectory"]
    if name in PRESET_TRAJECTORIES:
        params = item.get("trajectory_params") or {}  # over the preset's defaults (trajectory.PRESETS)
        fixed = _FIXED_PARAMS & set(params)
        if fixed:
            raise ItemError("bad_trajectory_params", f"{item_id}: trajectory_params may not set {sorted(fixed)}")
        try:
            return trajectory.make_trajectory(name, frames, size, **params)
        except TypeError as exc:
            raise ItemError("bad_trajectory_params", f"{item_id}: {name} trajectory_params: {exc}") from exc
        except ValueError as exc:
            reason = "nan_cameras" if _is_nan_error(str(exc)) else "bad_trajectory_params"
            raise ItemError(reason, f"{item_id}: {name} with {item.get('trajectory_params')}: {exc}") from exc

    local = fetch_local(name, options, workdir, "camera file", "missing_camera_file")
    try:
        traj = formats.load_trajectory(local, image_size=size)
    except Exception as exc:  # parsers raise ValueError, but also UnicodeDecodeError, pycolmap errors, ...
        text = str(exc).replace(local, name)
        reason = "nan_cameras" if _is_nan_error(text) else "bad_camera_file"
        if name not in text:
            text = f"{name}: {text}"
        raise ItemError(reason, f"camera file {text}") from exc
    if len(traj) != frames:
        traj = trajectory.resample(traj, frames)
    return traj.resized(size)


def load_first_frame(item: dict[str, Any], traj, config: GenerateBatchConfig,
                     options: storage.StorageOptions | None = None) -> tuple[np.ndarray, Any]:
    """(H, W, 3) uint8 first frame at the generation size, and its depth (synthetic frames only)."""
    size = (config.height, config.width)
    uri = item["image"]
    if uri == SYNTHETIC_IMAGE:
        from mirage_model.io.images import to_uint8
        from mirage_model.synthetic import default_scene, render

        view = render(default_scene(int(item["seed"])), traj.K[0], traj.c2w[0], size)
        return to_uint8(view.rgb.numpy()), view.depth
    from PIL import Image, UnidentifiedImageError

    try:
        data = storage.read_bytes(uri, options)
    except FileNotFoundError as exc:
        raise ItemError("missing_image", f"image {uri} does not exist") from exc
    except (IsADirectoryError, OSError) as exc:
        raise ItemError("bad_image", f"image {uri} cannot be read: {exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            image = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ItemError("bad_image", f"image {uri} is not a readable image: {exc}") from exc
    return image, None


# ----------------------------------------------------------------------------------------------
# Per item: metrics and publication
# ----------------------------------------------------------------------------------------------
def _finite_or_none(x: Any) -> Any:
    """NaN/inf -> None (metrics.json and the manifest stay strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def item_metrics(frames: np.ndarray, chunk_stats: list[dict], traj) -> dict[str, Any]:
    """Revisit consistency, per-frame cost and cache size of one generated video."""
    from mirage_model.evaluation import revisit_consistency

    rc = revisit_consistency(frames, traj)
    seconds = float(sum(s["seconds"] for s in chunk_stats))
    cache_bytes = [int(s["cache_bytes"]) for s in chunk_stats]
    return {
        "revisit_psnr": rc["psnr"], "revisit_ssim": rc["ssim"], "revisit_pairs": rc["pairs"],
        "generation_s": seconds, "frames": int(frames.shape[0]), "chunks": len(chunk_stats),
        "s_per_frame_mean": seconds / max(1, frames.shape[0]),
        "s_per_frame_first": float(chunk_stats[0]["seconds_per_frame"]),
        "s_per_frame_last": float(chunk_stats[-1]["seconds_per_frame"]),
        "cache_points": [int(s["cache_points"]) for s in chunk_stats],
        "cache_bytes": cache_bytes,
        "cache_mib_last": cache_bytes[-1] / 2 ** 20,
        "hole_rate": [float(s["hole_rate"]) for s in chunk_stats],
    }


def _remove_stale_tmp(out_dir: str, options: storage.StorageOptions | None) -> None:
    """Delete ``.tmp-*`` leftovers of an interrupted earlier attempt at this item."""
    for uri in storage.find_names(out_dir, f"{storage.TMP_PREFIX}*", options):
        storage.remove(uri, options)


def publish_item(result, traj, gen_config, out_dir: str, record: dict[str, Any], workdir: str,
                 options: storage.StorageOptions | None = None) -> dict[str, str]:
    """Write the item's files under ``out_dir`` atomically, ``metrics.json`` (= ``record``) last."""
    from mirage_model.generation import save_outputs

    _remove_stale_tmp(out_dir, options)
    local = save_outputs(result, traj, os.path.join(workdir, "out"), fps=gen_config.fps)  # with result.settings
    outputs = {key: storage.join_uri(out_dir, name) for key, name in ITEM_FILES.items()}
    for key in ITEM_FILES:
        storage.atomic_write_file(local[key], outputs[key], options, move=True)
    outputs["metrics"] = storage.join_uri(out_dir, METRICS_FILE)
    record["outputs"] = outputs
    payload = json.dumps(_finite_or_none(record), indent=2, allow_nan=False).encode()
    storage.atomic_write_bytes(outputs["metrics"], payload, options)  # the commit marker
    return outputs


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def world_dir(world: str) -> Path:
    """A world directory (``mirage export-world``): ``world`` as given, else among the shipped
    resources (``assets/world``); FileNotFoundError naming it when it has no ``world.json``."""
    from jobs.resources import RESOURCE_ROOT
    from jobs.train import WORLD_FILE

    path = Path(world).expanduser()
    if not path.is_absolute() and not path.exists():
        path = RESOURCE_ROOT / path
    if not (path / WORLD_FILE).is_file():
        raise FileNotFoundError(f"world {world}: no {WORLD_FILE} (written by `mirage export-world`; `make world` "
                                "builds the shipped one)")
    return path.resolve()


def load_generator(model: GeneratorModelConfig, device: str, options: storage.StorageOptions | None = None):
    """The generator of ``model`` on ``device``: a preset's random weights or a local diffusers
    directory, then a trained checkpoint (a run or checkpoint directory, local or ``s3://``) or a
    world (its preset, ``model/`` and ``vae/``). The loaded checkpoint's record decides what
    generation must agree with (``MirageGenerator.settings``); a world's ``world.json`` stands in for
    a checkpoint without one."""
    from jobs.train import WORLD_FILE, local_checkpoint
    from mirage_model.generation import MirageGenerator
    from mirage_model.model.checkpoint import read_model_record

    world = None
    if model.world:
        path = world_dir(model.world)
        world = json.loads((path / WORLD_FILE).read_text())
        trained_as = ((world.get("note") or {}).get("model") or {}).get("preset")
        if model.preset and trained_as and model.preset != trained_as:
            raise ValueError(f"model.preset={model.preset}, but the world {model.world} was trained as preset "
                             f"{trained_as}: leave the preset unset to use the world's")
        preset = model.preset or trained_as
        model = model.model_copy(update={"world": None, "preset": preset, "checkpoint": str(path / "model"),
                                         "vae": str(path / "vae")})
    checkpoint = local_checkpoint(model.checkpoint, options) if model.checkpoint else None
    record = read_model_record(checkpoint) if checkpoint else {}
    if not model.model_dir:
        if record.get("model_dir"):
            raise ValueError(f"checkpoint {model.checkpoint} was trained on the model in {record['model_dir']}: "
                             "give model.model_dir (--model-dir)")
        if model.preset and record.get("preset") and model.preset != record["preset"]:
            raise ValueError(f"model.preset={model.preset}, but the checkpoint {model.checkpoint} was trained as "
                             f"preset {record['preset']}: leave the preset unset to use the checkpoint's")
        model = model.model_copy(update={"preset": model.preset or record.get("preset") or "tiny"})
        if not model.vae and record.get("vae"):  # the latents it learnt are this VAE's
            if not os.path.isdir(record["vae"]):
                raise ValueError(f"checkpoint {model.checkpoint} was trained on the latents of the VAE in "
                                 f"{record['vae']}, which is not on this machine: give model.vae (--vae)")
            log.info("the VAE the checkpoint was trained with: %s", record["vae"])
            model = model.model_copy(update={"vae": record["vae"]})
    dtype = None
    if model.dtype:
        import torch

        dtype = getattr(torch, model.dtype)
    if model.model_dir:  # an s3:// model is downloaded once per node
        gen = MirageGenerator.from_pretrained(storage.local_copy(model.model_dir, options), branch_dir=model.branch_dir,
                                              lora=model.lora, dtype=dtype, device=device)
    else:
        gen = MirageGenerator.from_preset(model.preset, seed=model.seed, device=device, lazy_vae=bool(model.vae),
                                          **({"dtype": dtype} if dtype is not None else {}))
        if model.vae:  # replaces the preset's random VAE, which is then never built
            from mirage_model.vae import load_vae

            gen.vae = load_vae(model.vae)
        gen = gen.to(device)
    if checkpoint:
        gen.load_training_checkpoint(checkpoint).to(device)
        if world is not None and not gen.record:  # a world exported before checkpoints carried model.json
            gen.record = {"preset": model.preset, "sample": world.get("sample") or {}}
    if model.memory is not None:
        gen.record = {**gen.record, "memory": model.memory.model_dump(mode="json")}
    return gen


class GeneratorActor:
    """Ray Data actor UDF: loads the generator once, then turns prompt items into result rows."""

    model_loads = 0  # per worker process: lets the tests check that the model is loaded once

    def __init__(self, config: GenerateBatchConfig):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.config = config
        self.options = config.storage.options()
        self.device = resolve_device(config.generation.device)
        t0 = time.perf_counter()
        self.generator = load_generator(config.model, self.device, config.storage.options())
        type(self).model_loads += 1
        log.info("generator loaded on %s in %.1f s (pid %d)", self.device, time.perf_counter() - t0, os.getpid())

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [self.process(json.loads(str(text))) for text in batch["item"]]
        return {k: [r[k] for r in rows] for k in ROW_KEYS}

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        """Generate, measure and publish one item; any failure becomes a ``failed`` record."""
        t0 = time.perf_counter()
        item_id = item["id"]
        cfg = self.config
        out_dir = storage.join_uri(self.config.output, item_id)
        try:
            with tempfile.TemporaryDirectory(prefix="mirage-gen-") as work:
                traj = build_trajectory(item, self.config, work, self.options)
                image, depth = load_first_frame(item, traj, self.config, self.options)
                gen_config = cfg.generation.model_copy(update={"seed": int(item["seed"]), "device": self.device,
                                                               "progress": False})
                try:
                    result = self.generator.generate(image, item["prompt"], traj, gen_config, first_depth=depth)
                except Exception as exc:
                    log.exception("%s: generation failed", item_id)
                    raise ItemError("generation_error", f"{item_id}: generation failed: "
                                                        f"{type(exc).__name__}: {exc}") from exc
                record = {
                    "id": item_id, "status": "ok", "reason": None, "message": "", "line": item.get("line"),
                    "prompt": item["prompt"], "image": item["image"], "trajectory": item["trajectory"],
                    "trajectory_params": item.get("trajectory_params") or {}, "seed": int(item["seed"]),
                    "frames": int(result.frames.shape[0]), "height": cfg.height, "width": cfg.width,
                    "steps": result.settings.steps, "memory": cfg.generation.memory, "device": self.device,
                    "metrics": item_metrics(result.frames, result.chunk_stats, traj),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                record["metrics"]["wall_s"] = time.perf_counter() - t0
                try:
                    publish_item(result, traj, gen_config, out_dir, record, work, self.options)
                except Exception as exc:
                    log.exception("%s: writing outputs failed", item_id)
                    raise ItemError("write_error", f"{item_id}: writing {out_dir} failed: "
                                                   f"{type(exc).__name__}: {exc}") from exc
            log.info("%s: ok, %d frames in %.1f s", item_id, record["frames"], time.perf_counter() - t0)
        except ItemError as exc:
            log.warning("%s: %s (%s)", item_id, exc.reason, exc.message)
            record = failed_record(item_id, exc.reason, exc.message, item.get("line"))
        return {"id": item_id, "status": record["status"], "reason": record["reason"] or "",
                "record": json.dumps(_finite_or_none(record)), "actor_pid": os.getpid(),
                "model_loads": type(self).model_loads, "rss_mib": peak_rss_mib(), "busy_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def list_done(output: str, options: storage.StorageOptions | None = None) -> dict[str, dict[str, Any]]:
    """``{id: metrics.json record}`` of the items whose commit marker exists under ``output``."""
    fs, root = storage.filesystem(output, options)
    if not fs.exists(root):
        return {}
    done: dict[str, dict[str, Any]] = {}
    for path in fs.glob(f"{root.rstrip('/')}/*/{METRICS_FILE}"):
        item_id = path.replace(os.sep, "/").rstrip("/").split("/")[-2]
        try:
            done[item_id] = json.loads(fs.cat_file(path))
        except (OSError, ValueError) as exc:  # cannot happen with atomic writes; regenerate if it does
            log.warning("%s: unreadable %s (%s); the item will be regenerated", item_id, METRICS_FILE, exc)
    return done


def build_dataset(items: list[dict[str, Any]], config: GenerateBatchConfig):
    """The Ray Data plan (lazy): one block per item -> the generator actor pool -> result rows."""
    import ray

    res = config.resources
    rows = [{"id": it["id"], "item": json.dumps(it)} for it in items]
    # One block per item, so items spread over the actors instead of queueing behind one block.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    # The UDF turns every per-item error into a row; an errored block can only come from a lost
    # worker. Tolerate those (the driver records the missing items as ``worker_error``) so that a
    # crash never loses the manifest of the rest. Set on this dataset's own context copy only.
    ds.context.max_errored_blocks = len(rows)
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(res.concurrency, len(rows))))
    gpus = {"num_gpus": res.num_gpus} if res.num_gpus else {}
    return ds.map_batches(GeneratorActor, batch_size=1, compute=pool, fn_constructor_args=(config,),
                          num_cpus=res.num_cpus, **gpus)


def manifest_row(record: dict[str, Any], generated: bool) -> dict[str, Any]:
    """The manifest line of one item."""
    return {"id": record["id"], "status": record["status"], "reason": record.get("reason"),
            "message": record.get("message", ""), "outputs": record.get("outputs", {}),
            "metrics": record.get("metrics", {}), "generated_this_run": generated}


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Means over ok items (revisit metrics over the items that revisit a pose) + counts."""
    rows = list(rows)
    ok = [r["metrics"] for r in rows if r["status"] == "ok"]

    def mean(key: str) -> float:
        vals = [float(m[key]) for m in ok if m.get(key) is not None and math.isfinite(float(m[key]))]
        return float(np.mean(vals)) if vals else math.nan

    return {"revisit_psnr": mean("revisit_psnr"), "revisit_ssim": mean("revisit_ssim"),
            "s_per_frame": mean("s_per_frame_mean"), "cache_mib_last": mean("cache_mib_last"),
            "n_ok": float(len(ok)), "n_failed": float(len(rows) - len(ok))}


def run_generate_batch(config: GenerateBatchConfig) -> dict[str, Any]:
    """Run the batch to completion; returns the summary (printed by ``format_summary``)."""
    t0 = time.perf_counter()
    options = config.storage.options()
    items, rejected = read_prompt_set(config.prompts, options)
    if config.model.model_dir and not storage.is_s3(config.model.model_dir) and not os.path.isdir(config.model.model_dir):
        raise FileNotFoundError(f"model.model_dir {config.model.model_dir} does not exist")
    done = list_done(config.output, options)
    pending = [it for it in items if it["id"] not in done]
    log.info("%d items (+%d invalid lines): %d done before, %d to generate", len(items), len(rejected),
             len(items) - len(pending), len(pending))
    results: list[dict[str, Any]] = []
    if pending:
        init_ray(config.ray_address)
        results = collect(build_dataset(pending, config), len(pending), "item")
    new = {r["id"]: json.loads(r["record"]) for r in results}
    actors = {int(r["actor_pid"]): int(r["model_loads"]) for r in results}

    records: list[tuple[int, dict[str, Any]]] = []
    for it in items:
        if it["id"] in done:
            records.append((it["line"], manifest_row(done[it["id"]], generated=False)))
        elif it["id"] in new:
            records.append((it["line"], manifest_row(new[it["id"]], generated=True)))
        else:
            rec = failed_record(it["id"], "worker_error", f"{it['id']}: no result (the worker was lost)")
            records.append((it["line"], manifest_row(rec, generated=True)))
    records += [(r["line"], manifest_row(r, generated=False)) for r in rejected]
    rows = [r for _, r in sorted(records, key=lambda x: x[0])]

    manifest_uri = storage.join_uri(config.output, MANIFEST_NAME)
    text = "".join(json.dumps(_finite_or_none(r), allow_nan=False) + "\n" for r in rows)
    storage.atomic_write_bytes(manifest_uri, text.encode(), options)

    summary: dict[str, Any] = {
        "items": len(rows), "done_before": len(items) - len(pending), "generated": len(pending),
        "status": dict(Counter(r["status"] for r in rows)),
        "reasons": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
        "metrics": aggregate(rows), "manifest": manifest_uri, "output": config.output,
        "actors": actors, "wall_s": time.perf_counter() - t0,
    }
    ok = [r for r in rows if r["status"] == "ok"]
    frames = sum(int(new[r["id"]].get("frames", 0)) for r in results if r["status"] == "ok")
    acct = job_summary(
        "generate-batch", summary["wall_s"], inputs=len(rows), accepted=len(ok), rejected=summary["reasons"],
        frames=frames, stage_seconds={"generate": sum(float(r["busy_s"]) for r in results)},
        peak_rss={f"actor{pid}": max(float(r["rss_mib"]) for r in results if int(r["actor_pid"]) == pid)
                  for pid in actors},
        details={"done_before": summary["done_before"], "generated": summary["generated"],
                 "metrics": _finite_or_none(summary["metrics"]), "manifest": manifest_uri})
    summary["summary"] = write_summary(acct, storage.join_uri(config.output, SUMMARY_FILE), options)
    if config.mlflow.enabled:
        summary["mlflow"] = log_mlflow(config, rows, summary, acct)
    summary["wall_s"] = time.perf_counter() - t0
    return summary


# ----------------------------------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------------------------------
def _results_csv(rows: list[dict[str, Any]]) -> str:
    cols = ["id", "status", "reason", "message", "revisit_psnr", "revisit_ssim", "revisit_pairs",
            "s_per_frame_mean", "s_per_frame_first", "s_per_frame_last", "cache_mib_last", "frames", "video"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    for r in rows:
        m = r.get("metrics") or {}
        writer.writerow({"id": r["id"], "status": r["status"], "reason": r.get("reason") or "",
                         "message": r.get("message", ""), "video": (r.get("outputs") or {}).get("video", ""),
                         **{c: m.get(c, "") for c in cols if c in m}})
    return buf.getvalue()


def log_mlflow(config: GenerateBatchConfig, rows: list[dict[str, Any]], summary: dict[str, Any],
               acct: dict[str, Any]) -> dict[str, str]:
    """One MLflow run (jobs.tracking.Tracker): params = the config, metrics = aggregated means and the
    accounting (``acct``, the job's summary.json), artifacts = results table, summary.json and the
    first ``mlflow.log_videos`` videos."""
    tracker = Tracker.start(config.mlflow, "generate-batch", params=config.model_dump(mode="json"))
    try:
        tracker.log_metrics({**summary["metrics"], "n_generated": summary["generated"],
                             "n_done_before": summary["done_before"], "wall_s": summary["wall_s"],
                             **summary_metrics(acct)})
        tracker.log_text(_results_csv(rows), "results.csv")
        tracker.log_text("".join(json.dumps(_finite_or_none(r)) + "\n" for r in rows), "results.jsonl")
        tracker.log_text(json.dumps(acct, indent=1, sort_keys=True, default=str), SUMMARY_FILE)
        ok = [r for r in rows if r["status"] == "ok" and r["outputs"].get("video")]
        with tempfile.TemporaryDirectory(prefix="mirage-mlflow-") as tmp:
            for r in ok[:config.mlflow.log_videos]:
                local = os.path.join(tmp, f"{r['id']}.mp4")
                with open(local, "wb") as f:
                    f.write(storage.read_bytes(r["outputs"]["video"], config.storage.options()))
                tracker.log_artifact(local, artifact_path="videos")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log.info("MLflow run %s in experiment %r at %s", tracker.run_id, config.mlflow.experiment, tracker.tracking_uri)
    return tracker.summary()


def format_summary(summary: dict[str, Any]) -> str:
    m = summary["metrics"]
    lines = [f"items: {summary['items']} ({summary['done_before']} done before this run, "
             f"{summary['generated']} generated now)",
             "status: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["status"].items()))]
    if summary["reasons"]:
        lines.append("failed by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items())))
    lines.append(f"revisit PSNR {m['revisit_psnr']:.2f} dB, SSIM {m['revisit_ssim']:.3f}; "
                 f"{m['s_per_frame']:.3f} s/frame; cache {m['cache_mib_last']:.3f} MiB (last chunk); "
                 "means over ok items")
    lines.append(f"manifest: {summary['manifest']}; wall {summary['wall_s']:.1f} s")
    if summary.get("mlflow"):
        lines.append(f"mlflow: run {summary['mlflow']['run_id']} at {summary['mlflow']['tracking_uri']}")
    return "\n".join(lines)
