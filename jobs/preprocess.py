"""``mirage preprocess``: raw videos -> camera poses, depth, static masks, latents, captions and their
text states -> WebDataset shards.

The driver lists the inputs, skips those a previous run finished (``shards.scan_output``), groups
the rest into shards, and streams them through the Ray Data stages of ``pipeline.stages``:

    from_items(inputs) -> flat_map(DecodeClips) -> map(EstimatePoses)
        -> map(EstimateDepth) or map_batches(LearnedDepth) -> map(EstimateMasks) [-> map_batches(PropagateMasks)]
        [-> map(EncodeLatents)] [-> map_batches(CaptionClips)] [-> map_batches(EncodeText)]
        -> map(EncodeSample) -> map_batches(PublishCompleteGroups)

Nothing waits for the whole run: a shard group is published as soon as its last clip is through
(``PublishCompleteGroups``). The driver then merges the sidecars into ``manifest.jsonl`` and prints a summary.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from typing import Any

from jobs.accounting import SUMMARY_FILE, job_summary, write_summary
from jobs.ray_runtime import collect, init_ray
from jobs.tracking import Tracker
from pipeline import shards, storage
from pipeline.budget import no_progress_timeout_s
from pipeline.config import PreprocessConfig

log = logging.getLogger(__name__)


def plan_inputs(config: PreprocessConfig) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Rows ``{uri, input_id, group_id, group_inputs, caption}`` for the inputs not done yet (``caption``:
    the source's ``.jsonl`` row's, else empty), and what the scan found."""
    options = config.storage.options()
    uris = storage.list_files(config.source, options)
    if not uris:
        raise FileNotFoundError(f"no videos found at {config.source}")
    ids = {shards.make_input_id(u): u for u in uris}
    fields = storage.manifest_fields(config.source, options)  # a .jsonl source's captions
    state = shards.scan_output(config.output, options, cleanup=True)
    pending = state.pending(ids)
    rows = []
    for group in shards.group_inputs(pending, config.inputs_per_shard):
        gid = shards.group_id_for(group)
        rows += [{"uri": ids[i], "input_id": i, "group_id": gid, "group_inputs": len(group),
                  "caption": str(fields.get(ids[i], {}).get("caption") or "")} for i in group]
    info = {"inputs": len(ids), "done_before": len(ids) - len(pending), "pending": len(pending),
            "cleaned_up": len(state.removed)}
    return rows, info


def build_dataset(rows: list[dict[str, str]], config: PreprocessConfig):
    """The Ray Data plan (lazy) from input rows to one summary row per published group."""
    import ray

    from pipeline.stages import (
        CaptionClips,
        EncodeLatents,
        EncodeSample,
        EncodeText,
        EstimateDepth,
        EstimateMasks,
        EstimatePoses,
        LearnedDepth,
        PropagateMasks,
        PublishCompleteGroups,
    )

    res = config.resources
    gpus = _gpu_share(config)
    cpu = {"num_cpus": res.num_cpus}
    accel = {"num_cpus": res.num_cpus, "num_gpus": gpus(res.num_gpus, "resources.num_gpus")}
    # Stateless stages run as Ray tasks (scheduled as CPUs free up, so any number of stages fits a
    # small machine); only stages that load a model keep it in a pool of actors, which starts at one
    # actor and grows to ``concurrency`` (actors hold their CPUs while they live).
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=res.concurrency)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    # One input per task: Ray Data would otherwise bundle these tiny rows (a URI each) into a single
    # task, and the whole fused chain behind it would run on one CPU.
    ds = ds.map_batches(functools.partial(_decode_batch, config), batch_size=1, **cpu)
    ds = ds.map(as_task(EstimatePoses, config), **cpu)
    if config.depth.method == "model":  # one model call for the frames of several clips, on its GPU share
        ds = ds.map_batches(LearnedDepth, fn_constructor_args=(config,), batch_size=config.depth.clips_per_batch,
                            compute=pool, num_cpus=res.num_cpus, num_gpus=gpus(config.depth.num_gpus, "depth.num_gpus"))
    else:
        ds = ds.map(as_task(EstimateDepth, config), **cpu)
    if config.masks.method == "model":
        ds = ds.map(EstimateMasks, fn_constructor_args=(config,), compute=pool, **cpu)
    else:
        ds = ds.map(as_task(EstimateMasks, config), **cpu)
    if config.masks.video_model_dir:  # the moving objects followed through each clip by a video model
        ds = ds.map_batches(PropagateMasks, fn_constructor_args=(config,), batch_size=config.masks.clips_per_batch,
                            compute=pool, num_cpus=res.num_cpus, num_gpus=gpus(config.masks.num_gpus, "masks.num_gpus"))
    if config.latents.vae:
        ds = ds.map(EncodeLatents, fn_constructor_args=(config,), compute=pool, **accel)
    if config.captions.method == "model":  # after the perception: only clips that made it are captioned
        ds = ds.map_batches(CaptionClips, fn_constructor_args=(config,), batch_size=config.captions.batch_size,
                            compute=pool, num_cpus=res.num_cpus,
                            num_gpus=gpus(config.captions.num_gpus, "captions.num_gpus"))
    text = config.text_embeddings
    if text.model:  # one encoder call per batch of clips, on its own GPU share
        ds = ds.map_batches(EncodeText, fn_constructor_args=(config,), batch_size=text.batch_size, compute=pool,
                            num_cpus=res.num_cpus, num_gpus=gpus(text.num_gpus, "text_embeddings.num_gpus"))
    ds = ds.map(as_task(EncodeSample, config), **cpu)  # mp4 + compression on a worker CPU, not the publisher
    # One publisher (every clip of a group must reach it), holding no CPU while it waits for clips;
    # it retries storage errors itself (nothing is half-visible: temp name + rename), and Ray Data
    # restarts a lost actor and resubmits its batch; per-clip failures upstream are already rows
    # with a reason.
    # It lives on the driver's node: losing any other node then never loses its groups in flight.
    return ds.map_batches(PublishCompleteGroups, fn_constructor_args=(config,), batch_size=1,
                          compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                          label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()})


def _gpu_share(config: PreprocessConfig):
    """What a model stage's GPU request becomes: as configured on a cluster (an autoscaler may add
    GPU nodes for it), and 0 with a warning on a local Ray without GPUs, where Ray would never
    schedule it (the stage then runs on the CPU, slowly)."""
    import ray

    local_cpu_only = config.ray_address is None and not ray.cluster_resources().get("GPU")

    def share(asked: float, key: str) -> float:
        if asked and local_cpu_only:
            log.warning("%s=%s but this machine has no GPU: the stage runs on the CPU (slow)", key, asked)
            return 0.0
        return asked

    return share


def as_task(stage_cls, config: PreprocessConfig):
    """A plain function (a Ray task, not an actor) applying a light stage built from ``config``."""
    return functools.partial(_run_stage, stage_cls, config)


def _run_stage(stage_cls, config: PreprocessConfig, item):
    return stage_cls(config)(item)


def _decode_batch(config: PreprocessConfig, batch: dict) -> dict:
    """``DecodeClips`` over a batch of input rows (one input -> one row per clip)."""
    from pipeline.stages import ROW_KEYS, DecodeClips

    decode = DecodeClips(config)
    items = [dict(zip(batch, values)) for values in zip(*batch.values())]
    rows = [row for item in items for row in decode(item)]
    return {k: [row[k] for row in rows] for k in ROW_KEYS}


def run_preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """Run the pipeline to completion; returns the summary (also printed by the CLI) and logs it,
    with the manifest, to the job's MLflow run."""
    t0 = time.perf_counter()
    rows, info = plan_inputs(config)
    log.info("%d inputs: %d done before, %d to process in %d shard groups", info["inputs"],
             info["done_before"], info["pending"], len({r["group_id"] for r in rows}))
    tracker = Tracker.start(config.mlflow, "preprocess", params=config.model_dump(mode="json"))
    groups: list[dict[str, Any]] = []
    try:
        if rows:
            import ray

            init_ray(config.ray_address)
            # no clip can hold a stage longer than its budget: the guard fires only on a real hang
            guard = no_progress_timeout_s(config.budget, config.clip.max_clips)
            if guard is not None:
                ray.data.DataContext.get_current().execution_no_progress_timeout_s = guard
            planned = {r["group_id"] for r in rows}
            collect(build_dataset(rows, config), len(planned), "shard group", groups)
            lost = planned - {g["group_id"] for g in groups}
            if lost:  # the publisher's actor went down with a node: run what is still pending once more
                log.warning("%d shard group(s) were not published (a worker was lost); processing their "
                            "inputs again", len(lost))
                again, _ = plan_inputs(config)
                collect(build_dataset(again, config), len({r["group_id"] for r in again}), "shard group", groups)
        manifest = shards.finalize_manifest(config.output, config.storage.options())
    except BaseException as exc:
        # what was published stays published; the summary says what finished and why the run stopped
        _write_run_summary(config, info, groups, time.perf_counter() - t0, None, tracker,
                           failure=f"{type(exc).__name__}: {exc}")
        tracker.finish("FAILED")
        raise
    wall = time.perf_counter() - t0
    summary = _write_run_summary(config, info, groups, wall, manifest, tracker)
    if tracker.enabled and storage.exists(manifest["manifest"], config.storage.options()):
        tracker.log_text(storage.read_bytes(manifest["manifest"], config.storage.options()).decode(), "manifest.jsonl")
    tracker.finish()
    summary["mlflow"] = tracker.summary() if tracker.enabled else None
    return summary


def _outcomes(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Clips, frames and stage seconds of accepted and of rejected clips, apart."""
    out = {}
    for status, label in (("ok", "accepted"), ("rejected", "rejected")):
        clips = sum(g[f"clips_{status}"] for g in groups)
        stage_s: Counter = Counter()
        for g in groups:
            stage_s.update(json.loads(g[f"stage_s_{status}"]))
        total = sum(stage_s.values())
        out[label] = {"clips": clips, "frames": sum(g[f"frames_{status}"] for g in groups),
                      "stage_seconds": {k: round(v, 3) for k, v in stage_s.items() if v},
                      "seconds_per_clip": round(total / clips, 3) if clips else None}
    return out


def _write_run_summary(config: PreprocessConfig, info: dict[str, Any], groups: list[dict[str, Any]], wall: float,
                       manifest: dict[str, Any] | None, tracker, failure: str | None = None) -> dict[str, Any]:
    """``summary.json`` of the run (also when it failed: what finished, and ``details.failure``);
    returns the summary the CLI prints."""
    frames = sum(g["frames"] for g in groups)
    stage_s, rss, rejected = Counter(), {}, Counter()
    for g in groups:
        for k, v in g.items():
            if k.startswith("t_"):
                stage_s[k[2:]] += v
            elif k.startswith("rss_") and v:
                rss[k[4:]] = max(rss.get(k[4:], 0.0), v)
        rejected.update(json.loads(g["rejected"]))
    summary = {**info, "manifest": manifest, "wall_s": wall, "frames": frames,
               "frames_per_s": frames / wall if wall else 0.0, "stage_seconds": dict(stage_s),
               "groups_published": len(groups)}
    if manifest is not None:
        tracker.log_metrics({"inputs": info["inputs"], "done_before": info["done_before"],
                             "samples": manifest["samples"], "shards": manifest["shards"], "frames": frames,
                             "wall_s": wall, **{f"status.{k}": v for k, v in manifest["status"].items()},
                             **{f"stage_s.{k}": v for k, v in stage_s.items()}})
    processed = sum(g["n_inputs"] for g in groups)
    details = {"samples": sum(g["n_samples"] for g in groups), "groups": len(groups), "listed": info["inputs"],
               "clips_uncaptioned": sum(g["clips_uncaptioned"] for g in groups),
               "done_before": info["done_before"], "outcomes": _outcomes(groups)}
    if manifest is not None:
        details.update(output_samples=manifest["samples"], output_shards=manifest["shards"])
    if failure is not None:
        details["failure"] = failure
    summary["outcomes"] = details["outcomes"]
    summary["clips_uncaptioned"] = details["clips_uncaptioned"]
    uri = storage.join_uri(config.output, SUMMARY_FILE)
    try:
        summary["summary"] = write_summary(job_summary(
            "preprocess", wall, inputs=processed, accepted=processed - sum(rejected.values()),
            rejected=dict(rejected), clips=sum(g["n_clips"] for g in groups), frames=frames,
            bytes_in=sum(g["bytes_in"] for g in groups), bytes_out=sum(g["bytes_out"] for g in groups),
            stage_seconds={k: v for k, v in stage_s.items() if v}, peak_rss=rss, details=details),
            uri, config.storage.options(), tracker)
    except Exception:
        if failure is None:
            raise
        log.exception("could not write %s after the run failed", uri)  # the run's own error comes next
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    m = summary["manifest"]
    lines = [f"inputs: {summary['inputs']} ({summary['done_before']} done before this run)",
             "status: " + ", ".join(f"{k} {v}" for k, v in sorted(m["status"].items())),
             f"samples: {m['samples']} in {m['shards']} shards; manifest: {m['manifest']}",
             f"frames: {summary['frames']} in {summary['wall_s']:.1f} s ({summary['frames_per_s']:.2f} frames/s)"]
    if m.get("reason"):
        lines.append("rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(m["reason"].items())))
    if summary["stage_seconds"]:
        total = sum(summary["stage_seconds"].values()) or 1.0
        lines.append("stage time (summed over workers): " + ", ".join(
            f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in summary["stage_seconds"].items() if v))
    if summary.get("clips_uncaptioned"):
        lines.append(f"clips without a caption: {summary['clips_uncaptioned']} (captions.* in the config)")
    per_clip = [f"{label} {o['seconds_per_clip']:.1f} s ({o['clips']} clips)"
                for label, o in summary.get("outcomes", {}).items() if o["clips"]]
    if per_clip:
        lines.append("stage time per clip: " + ", ".join(per_clip))
    return "\n".join(lines)
