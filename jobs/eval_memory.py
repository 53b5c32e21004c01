"""``mirage eval-memory``: the memory ablation on held-out synthetic scenes (docs/method.md §12).

    items (scene seed x closed path) -> Ray Data from_items -> map_batches(AblationActor, actor pool)
        each actor loads the generator once; per item it renders the ground truth, encodes its
        latents, generates once per memory mode and scores the video (memory_ablation.score_generation)
    -> driver: per-mode means -> <output>/eval_memory.json + eval_memory.md, one MLflow run

Modes: ``latent`` (the method), ``rgb`` (the RGB point cache), ``none`` (no memory) and
``latent-unfiltered`` (latent, writes not filtered for moving objects and sky). The headline
figures are fidelity to the ground truth on revisit frames; self-consistency (frame out vs frame
back) comes second, since a model that repeats itself scores well on it without being right.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jobs.accounting import SUMMARY_FILE, job_summary, summary_metrics, write_summary
from jobs.config import EvalMemoryConfig
from jobs.generate_batch import _finite_or_none, load_generator, resolve_device
from jobs.ray_runtime import collect, init_ray
from jobs.tracking import Tracker
from mirage_model.io.atomic import atomic_write_text
from pipeline.stages import peak_rss_mib

log = logging.getLogger(__name__)

REPORT = "eval_memory"
JSON_NAME, MARKDOWN_NAME = f"{REPORT}.json", f"{REPORT}.md"

HEADLINE = ("psnr_gt_revisit", "ssim_gt_revisit", "latent_snr_revisit", "psnr_gt_all", "ssim_gt_all",
            "latent_snr_all", "revisit_consistency_psnr", "revisit_consistency_latent_snr", "covered_consistency_latent_snr",
            "coverage_revisit",
            "chunk_seconds", "memory_seconds", "cache_bytes", "points_written")
"""The per-mode means reported (see ``memory_ablation.score_generation``)."""


def ablation_items(config: EvalMemoryConfig) -> list[dict[str, Any]]:
    return [{"id": f"scene{config.scene_seed + s}-{path}", "scene_seed": config.scene_seed + s, "path": path}
            for s in range(config.scenes) for path in config.paths]


class AblationActor:
    """Ray Data actor UDF: the generator is loaded once; each item is generated in every mode."""

    def __init__(self, config: EvalMemoryConfig):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.config = config
        self.device = resolve_device(config.generation.device)
        self.generator = load_generator(config.model, self.device, config.storage.options())
        if config.copy_readout:
            from mirage_model.evaluation.readout_copy import ReadoutCopyModel

            self.generator.transformer = ReadoutCopyModel(self.generator.transformer)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = []
        for text in batch["item"]:
            item = json.loads(str(text))
            t0 = time.perf_counter()
            try:
                row = self.evaluate(item)
            except Exception as exc:  # one bad item is recorded, the others go on
                reason = getattr(exc, "reason", "error")
                log.warning("%s not evaluated (%s): %s", item["id"], reason, exc, exc_info=reason == "error")
                row = {**item, "status": "failed", "reason": reason, "message": str(exc)}
            row["busy_s"], row["rss_mib"] = time.perf_counter() - t0, peak_rss_mib()
            rows.append(json.dumps(row))
        return {"row": rows}

    def prompt(self, item: dict[str, Any]) -> str:
        return ""

    def ground_truth(self, item: dict[str, Any]):
        """(reference frames (N, H, W, 3) uint8, trajectory, first-frame depth or None) of an item:
        here the render of a held-out scene along a closed path, with its true depth."""
        from mirage_model.evaluation.memory_ablation import closed_path
        from mirage_model.io.images import to_uint8
        from mirage_model.synthetic import default_scene, render_trajectory

        c = self.config
        size = (c.height, c.width)
        traj = closed_path(item["path"], c.frames, size)
        scene = default_scene(item["scene_seed"], texture_scale=c.texture_scale)
        gt = render_trajectory(scene, traj.K, traj.c2w, size, fps=16.0)
        return to_uint8(gt.rgb.numpy()), traj, gt.depth[0]

    def evaluate(self, item: dict[str, Any]) -> dict[str, Any]:
        """Generate ``item`` in every memory mode and score each video against its ground truth."""
        import torch

        from mirage_model.evaluation import psnr
        from mirage_model.evaluation.memory_ablation import score_generation
        from mirage_model.vae import decode_latents, encode_video

        c = self.config
        reference, traj, first_depth = self.ground_truth(item)
        video = torch.tensor(reference, dtype=torch.float32).div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
        ref_latents = encode_video(self.generator.vae, video.to(self.device))[0].cpu()
        recon = decode_latents(self.generator.vae, ref_latents[None].to(self.device))[0]
        recon = ((recon.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
        row: dict[str, Any] = {**item, "status": "ok", "vae_psnr": psnr(reference, recon), "modes": {}}
        for mode in c.modes:
            gcfg = c.generation.model_copy(update={"memory": "latent" if mode == "latent-unfiltered" else mode,
                                                   "filter_writes": mode != "latent-unfiltered",
                                                   "device": self.device, "progress": False})
            t0 = time.perf_counter()
            result = self.generator.generate(reference[0], self.prompt(item), traj, gcfg, first_depth=first_depth)
            scores = score_generation(result.frames, result.latents, result.visibility, result.chunk_stats,
                                      traj, reference, ref_latents)
            scores["seconds"] = time.perf_counter() - t0
            row["modes"][mode] = scores
            log.info("%s %s: PSNR %.2f dB (revisits %.2f), latent SNR %.2f dB, coverage %.2f", item["id"], mode,
                     scores["psnr_gt_all"], scores["psnr_gt_revisit"], scores.get("latent_snr_all", math.nan),
                     scores["coverage_revisit"])
        return row


def build_dataset(items: list[dict[str, Any]], config, actor=AblationActor):
    """``from_items`` -> ``map_batches(actor)`` on an actor pool (each actor loads the generator once)."""
    import ray

    res = config.resources
    ds = ray.data.from_items([{"item": json.dumps(it)} for it in items], override_num_blocks=max(1, len(items)))
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(res.concurrency, len(items))))
    gpus = {"num_gpus": res.num_gpus} if res.num_gpus else {}
    return ds.map_batches(actor, batch_size=1, compute=pool, fn_constructor_args=(config,),
                          num_cpus=res.num_cpus, **gpus)


def _mean(values: list[float]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def summarise(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per-mode means over the items that were scored, and the comparisons the method is judged by."""
    rows = [r for r in rows if "modes" in r]
    per_mode = {m: {k: _mean([r["modes"][m].get(k) for r in rows if m in r["modes"]]) for k in HEADLINE}
                for m in modes}
    out: dict[str, Any] = {"modes": per_mode, "vae_psnr": _mean([r["vae_psnr"] for r in rows])}
    for m in modes:
        scored = [r["modes"][m] for r in rows if m in r["modes"]]
        ops = sorted({k for s in scored for k in s.get("op_seconds", {})})
        per_mode[m]["op_seconds"] = {k: _mean([s.get("op_seconds", {}).get(k, 0.0) for s in scored]) for k in ops}
        cells = sorted({k for s in scored for k in s.get("cells", {})})
        per_mode[m]["cells"] = {k: int(sum(s.get("cells", {}).get(k, 0) for s in scored)) for k in cells}
    lat, none, rgb = per_mode.get("latent"), per_mode.get("none"), per_mode.get("rgb")
    if lat and none:
        out["latent_minus_none_psnr_revisit"] = lat["psnr_gt_revisit"] - none["psnr_gt_revisit"]
        out["latent_minus_none_latent_snr_revisit"] = lat["latent_snr_revisit"] - none["latent_snr_revisit"]
        out["memory_fraction_of_plain_chunk"] = lat["memory_seconds"] / none["chunk_seconds"]
    if lat and rgb:
        out["latent_minus_rgb_psnr_revisit"] = lat["psnr_gt_revisit"] - rgb["psnr_gt_revisit"]
        out["rgb_over_latent_memory_seconds"] = rgb["memory_seconds"] / max(lat["memory_seconds"], 1e-12)
    return out


def model_text(config) -> str:
    """What was evaluated, in words (the report's first line)."""
    text = "ReadoutCopyModel over " if config.copy_readout else ""
    return text + (config.model.checkpoint or config.model.model_dir or (config.model.world and f"world {config.model.world}")
                   or f"preset {config.model.preset or 'tiny'} (random weights)")


def format_markdown(summary: dict[str, Any], config: EvalMemoryConfig, items: str | None = None) -> str:
    """The report: per-mode figures, per-operation seconds and cell accounting, revisit PSNR per item
    (when ``summary`` lists its items), the comparisons.
    ``items`` describes what was evaluated (default: eval-memory's held-out scenes and paths)."""
    m = summary["modes"]
    if items is None:
        items = (f"{config.scenes} held-out scene(s) from seed {config.scene_seed} x {', '.join(config.paths)}")
    lines = [f"Model: {model_text(config)}. {items}; {config.frames} frames at {config.height}x{config.width}, "
             f"{config.generation.steps} steps. VAE reconstruction of the ground truth: {summary['vae_psnr']:.2f} dB "
             "(the ceiling of every pixel PSNR below).", "",
             "| mode | PSNR revisit (dB) | SSIM revisit | latent SNR revisit (dB) | PSNR all | latent SNR all | "
             "consistency PSNR | consistency latent SNR | same, covered cells | coverage revisit | memory s/chunk | chunk s | cache KiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, v in m.items():
        lines.append(f"| {mode} | {v['psnr_gt_revisit']:.2f} | {v['ssim_gt_revisit']:.3f} | "
                     f"{v['latent_snr_revisit']:.2f} | {v['psnr_gt_all']:.2f} | {v['latent_snr_all']:.2f} | "
                     f"{v['revisit_consistency_psnr']:.2f} | {v['revisit_consistency_latent_snr']:.2f} | "
                     f"{v['covered_consistency_latent_snr']:.2f} | "
                     f"{v['coverage_revisit']:.3f} | {v['memory_seconds']:.3f} | {v['chunk_seconds']:.3f} | "
                     f"{v['cache_bytes'] / 1024:.1f} |")
    lines += ["", "Seconds per chunk of each operation, and what the write-back did with the cells of the "
              "frames it wrote, summed over items (latent cells; pixels for rgb, which stores pixels):", "",
              "| mode | read | depth | masks | write | denoise | decode | cells read | of which filled | covered | "
              "written | no depth | excluded | known | unobserved |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, v in m.items():
        ops, cells = v.get("op_seconds", {}), v.get("cells", {})
        lines.append(f"| {mode} | " + " | ".join(f"{ops.get(k, 0.0):.3f}" for k in
                                                 ("read", "depth", "masks", "write", "denoise", "decode"))
                     + " | " + " | ".join(str(cells.get(k, 0)) for k in
                                          ("read", "filled", "covered", "written", "no_depth", "excluded", "known",
                                           "unobserved"))
                     + " |")
    scored = [r for r in summary.get("items", []) if "modes" in r]
    if scored:
        modes = list(m)
        diff = "latent" in modes and "none" in modes
        lines += ["", "PSNR on revisit frames per item (dB):", "",
                  "| item | " + " | ".join(modes) + (" | latent − none |" if diff else " |"),
                  "|---|" + "---|" * (len(modes) + diff)]
        for r in scored:
            psnr = {mode: r["modes"][mode].get("psnr_gt_revisit") for mode in modes if mode in r["modes"]}
            psnr = {k: float(v) for k, v in psnr.items() if v is not None and math.isfinite(float(v))}  # open paths: none
            cells = [f"{psnr[mode]:.2f}" if mode in psnr else "-" for mode in modes]
            if diff:
                cells.append(f"{psnr['latent'] - psnr['none']:+.2f}" if "latent" in psnr and "none" in psnr else "-")
            lines.append(f"| {r['id']} | " + " | ".join(cells) + " |")
    extra = [(k, summary[k]) for k in ("latent_minus_none_psnr_revisit", "latent_minus_none_latent_snr_revisit",
                                        "latent_minus_rgb_psnr_revisit", "memory_fraction_of_plain_chunk",
                                        "rgb_over_latent_memory_seconds") if k in summary]
    if extra:
        lines += [""] + [f"- {k}: {v:.3f}" for k, v in extra]
    return "\n".join(lines) + "\n"


def run_evaluation(config, items: list[dict[str, Any]], *, job: str, name: str, actor=AblationActor,
                   items_text: str | None = None, group_by: str | None = None) -> dict[str, Any]:
    """Score ``items`` on Ray Data with ``actor``; write ``<output>/<name>.json`` and ``.md`` and one
    MLflow run. Items an actor could not evaluate (``status: failed``, with a reason) are listed,
    not scored; the others are summarised per memory mode, and also per value of the item key
    ``group_by`` when given (``summary["groups"]``, one table each in the Markdown)."""
    t0 = time.perf_counter()
    init_ray(config.ray_address)
    rows = [json.loads(r["row"]) for r in collect(build_dataset(items, config, actor), len(items), "item")]
    rows.sort(key=lambda r: r["id"])
    scored = [r for r in rows if r.get("status", "ok") == "ok"]
    if not scored:
        raise RuntimeError(f"{job}: no item could be evaluated: "
                           + "; ".join(f"{r['id']}: {r.get('message', r.get('reason'))}" for r in rows))
    summary = {**summarise(scored, list(config.modes)), "items": rows, "config": config.model_dump(mode="json")}
    summary["failed"] = {r["id"]: r["reason"] for r in rows if r.get("status", "ok") != "ok"}
    os.makedirs(config.output, exist_ok=True)
    json_path, md_path = os.path.join(config.output, f"{name}.json"), os.path.join(config.output, f"{name}.md")
    summary["wall_s"] = time.perf_counter() - t0
    markdown = format_markdown(summary, config, items_text)
    if group_by:
        summary["groups"] = {}
        for value in sorted({r[group_by] for r in scored}):
            group = summarise([r for r in scored if r[group_by] == value], list(config.modes))
            summary["groups"][value] = group
            markdown += f"\n#### {group_by}: {value}\n\n" + format_markdown(group, config, items_text)
    if summary["failed"]:
        markdown += "\nNot evaluated: " + ", ".join(f"{k} ({v})" for k, v in summary["failed"].items()) + "\n"
    atomic_write_text(json_path, json.dumps(_finite_or_none(summary), indent=2, allow_nan=False))
    atomic_write_text(md_path, markdown)
    acct = job_summary(job, summary["wall_s"], inputs=len(rows), accepted=len(scored),
                       rejected=dict(Counter(summary["failed"].values())),
                       stage_seconds={"evaluate": sum(r.get("busy_s", 0.0) for r in rows)},
                       stage_items={"evaluate": len(rows)},
                       peak_rss={"actor": max((r.get("rss_mib", 0.0) for r in rows), default=0.0)},
                       details={"report": json_path, "markdown": md_path})
    summary["summary"] = write_summary(acct, os.path.join(config.output, SUMMARY_FILE))
    if config.mlflow.enabled:
        tracker = Tracker.start(config.mlflow, job, params=config.model_dump(mode="json"))
        try:
            flat = {f"{mode}.{k}": v for mode, vals in summary["modes"].items() for k, v in vals.items()
                    if isinstance(v, float)}
            flat.update({k: v for k, v in summary.items() if isinstance(v, float)})
            for value, group in summary.get("groups", {}).items():
                flat.update({f"{value}.{mode}.{k}": v for mode, vals in group["modes"].items()
                             for k, v in vals.items() if isinstance(v, float)})
            flat["items_failed"] = float(len(summary["failed"]))
            flat.update(summary_metrics(acct))
            tracker.log_metrics({k: v for k, v in flat.items() if math.isfinite(v)})
            tracker.log_artifact(json_path)
            tracker.log_artifact(md_path)
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish()
        summary["mlflow"] = tracker.summary()
    summary["json"], summary["markdown"] = json_path, md_path
    return summary


def run_eval_memory(config: EvalMemoryConfig) -> dict[str, Any]:
    return run_evaluation(config, ablation_items(config), job="eval-memory", name=REPORT)


def format_summary(summary: dict[str, Any]) -> str:
    return Path(summary["markdown"]).read_text() + f"\nwrote {summary['json']} and {summary['markdown']}"
