"""``mirage demo``: the whole project end to end on one small machine, with no configuration.

    [1/5] synthesise a few short videos with exact ground truth   (pipeline.synth_data)
    [2/5] preprocess them with Ray Data into WebDataset shards     (jobs.preprocess)
    [3/5] train both stages (memory branch, then LoRA) with Ray Train (jobs.train)
    [4/5] generate a pan-and-return video with memory latent / rgb / none from the trained
          checkpoint, and measure revisit consistency              (mirage_model.generation)
    [5/5] write ``<out>/report.html`` (jobs.report) and log a demo run to a local MLflow store

Everything lands under ``out_dir`` (default ``runs/demo``)::

    videos/  shards/  train/  generate/{reference,latent,rgb,none}/  report_assets/
    report.html  demo.json  mlflow.db  mlartifacts/

The MLflow store (``sqlite:///<out>/mlflow.db``, artifacts in ``<out>/mlartifacts``) holds two
runs per demo in the experiment ``mirage-demo``: the training job's own run and the demo run
(params, stage timings, revisit metrics, the report and videos as artifacts); both carry the tag
``mirage.demo = <demo id>``. Re-running into the same directory starts the stages afresh (the
MLflow store is kept, so earlier demos stay browsable); a non-empty directory that a demo did not
create is refused.

``run_demo(out_dir, quick=False)`` returns the result dict the report is drawn from (also written as
``demo.json``). ``quick=True`` is the shortened variant the test runs: two videos, the ``tiny``
preset, 10 steps per stage, one 33-frame chunk at 64x96 with 2 denoising steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jobs.accounting import SUMMARY_FILE, job_summary, write_summary
from jobs.config import CONFIG_DIR, DemoConfig, TrainConfig
from jobs.report import READOUT_PREFIX
from jobs.resources import RESOURCE_ROOT
from jobs.tracking import Tracker
from mirage_model.io.atomic import atomic_write_text
from pipeline.config import PreprocessConfig

log = logging.getLogger(__name__)

MARKER = ".mirage-demo"
OWNED = ("videos", "shards", "train", "generate", "report_assets", "report.html", "demo.json", SUMMARY_FILE)
"""What a fresh run removes from a directory a previous demo wrote (never mlflow.db / mlartifacts)."""


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _prepare_out(out: Path, fresh: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"--out {out} is not empty and was not written by `mirage demo`; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `mirage demo`; a re-run replaces: " + " ".join(OWNED) + "\n")
    if fresh:
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in out.glob(".tmp-*"):
            p.unlink(missing_ok=True)


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _mlflow_command() -> str:
    exe = shutil.which("mlflow")
    if exe:
        return "mlflow"
    venv = Path(sys.executable).with_name("mlflow")
    if venv.exists():
        try:
            return os.path.relpath(venv)
        except ValueError:
            return str(venv)
    return "mlflow"


def _open_tracker(cfg: DemoConfig, out: Path, demo_id: str) -> Tracker:
    """The demo's own MLflow run (created up front so the report can link it). Unless the config
    names a store, it lives in ``<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts``."""
    ml = cfg.mlflow
    if ml.tracking_uri is None:
        ml = ml.model_copy(update={"tracking_uri": "sqlite:///" + str(out / "mlflow.db"),
                                   "artifact_location": ml.artifact_location or (out / "mlartifacts").as_uri()})
    return Tracker.start(ml, "demo", run_name=demo_id,
                         tags={"mirage.demo": demo_id, "mirage.variant": "quick" if cfg.quick else "full"},
                         params={**cfg.model_dump(mode="json"), "demo_id": demo_id, "out_dir": str(out)})


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
WORLD_RECIPE = CONFIG_DIR / "train" / "world.yaml"
"""The training config of the shipped world (`make world`): whose sample layout a world without
one, or no world, is fine-tuned on."""


def recipe_sample() -> dict[str, Any]:
    """The training-sample layout (``SampleConfig`` keys) of ``WORLD_RECIPE``."""
    from mirage_model.config import load_config

    return load_config(TrainConfig, WORLD_RECIPE).data.layout()


@dataclasses.dataclass(frozen=True)
class World:
    """What the demo's model starts from: ``vae`` (a local diffusers VAE directory, or None: the
    preset's random one), ``init`` (a checkpoint directory training starts from, or None) and
    ``sample`` (the training-sample layout the world was trained on, from its world.json; the
    demo fine-tunes on the same unless its config says otherwise) and ``memory`` (the latent
    memory's settings it was trained with, from its checkpoint's record; the defaults when it has
    none)."""

    vae: str | None = None
    init: str | None = None
    sample: dict[str, Any] = dataclasses.field(default_factory=dict)
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, cfg: DemoConfig) -> World:
        """The world of ``cfg``, paths absolute; raises FileNotFoundError naming what is missing."""
        from jobs.train import WORLD_FILE
        from mirage_model.model.checkpoint import read_model_record
        from mirage_model.vae import resolve_vae_dir

        vae = init = None
        sample: dict[str, Any] = {}
        if cfg.world:
            world = Path(cfg.world).expanduser()
            if not world.is_absolute() and not world.exists():
                world = RESOURCE_ROOT / world  # the shipped one: the checkout's, or the installed package's
            if not (world / WORLD_FILE).is_file():
                raise FileNotFoundError(f"world {cfg.world}: no {WORLD_FILE} (`make world` writes one; set world: "
                                        "null to start from random weights)")
            vae, init = str((world / "vae").resolve()), str((world / "model").resolve())
            sample = json.loads((world / WORLD_FILE).read_text()).get("sample") or {}
            if not sample:
                log.warning("world %s records no training-sample layout (exported without --config): the demo "
                            "fine-tunes on the recipe's, %s", cfg.world, WORLD_RECIPE)
        sample = sample or recipe_sample()
        memory = (read_model_record(init).get("memory") or {}) if init else {}
        if cfg.vae:
            vae = str(Path(cfg.vae).expanduser().resolve())
        if vae:
            resolve_vae_dir(vae)
        return cls(vae=vae, init=init, sample=sample, memory=memory)

    def sample_layout(self, cfg: DemoConfig) -> dict[str, Any]:
        """The demo's training-sample layout: the world's (without a world, the recipe's), with the
        keys ``cfg`` sets over it."""
        given = {"target_latents": cfg.target_latents, "memory_from": cfg.memory_from,
                 **({"t0_min": cfg.t0_range[0], "t0_max": cfg.t0_range[1]} if cfg.t0_range else {})}
        return {**self.sample, **{k: v for k, v in given.items() if v is not None}}


def _synthesise(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from pipeline.synth_data import make_synthetic_dataset

    paths = make_synthetic_dataset(out / "videos", cfg.n_videos, seed=cfg.data_seed, frames=cfg.video_frames,
                                   size=cfg.video_size, texture_scale=cfg.texture_scale, revisit=cfg.revisit,
                                   camera_paths=cfg.camera_paths)
    return {"videos": [str(p) for p in paths], "dir": str(out / "videos")}


def _preprocess(cfg: DemoConfig, world: World, out: Path, ray_address: str | None) -> dict[str, Any]:
    from jobs.preprocess import run_preprocess

    pcfg = PreprocessConfig.model_validate({
        "source": str(out / "videos"), "output": str(out / "shards"),
        # a fast pan is one take, not a cut: the shot detector only sees the SfM-friendly tracks
        "shots": {"enabled": cfg.camera_paths == "track"},
        "clip": {"frames": cfg.clip_frames, "max_clips": 1, "min_side": min(cfg.video_size)},
        "poses": {"method": cfg.poses},
        "latents": {"vae": world.vae or "tiny"},
        "inputs_per_shard": 2, "ray_address": ray_address, "mlflow": {"enabled": False},
    })
    summary = run_preprocess(pcfg)
    manifest = summary["manifest"]
    detail = []
    mpath = Path(manifest["manifest"])
    if mpath.is_file():
        for line in mpath.read_text().splitlines():
            rec = json.loads(line)
            stats = next(iter((rec.get("stats") or {}).values()), {})
            detail.append({"name": Path(rec["uri"]).name, "status": rec.get("status"), "reason": rec.get("reason"),
                           "samples": len(rec.get("sample_keys") or []),
                           **{k: stats.get(k) for k in ("registered_fraction", "reprojection_error_px",
                                                        "depth_coverage", "moving_fraction")}})
    detail.sort(key=lambda r: r["name"])
    return {"inputs": manifest["inputs"], "samples": manifest["samples"], "shards": manifest["shards"],
            "status": manifest["status"], "reason": manifest.get("reason") or {},
            "manifest": manifest["manifest"], "output": str(out / "shards"), "wall_s": summary["wall_s"],
            "stage_seconds": summary["stage_seconds"], "inputs_detail": detail,
            "clip_frames": cfg.clip_frames, "video_frames": cfg.video_frames,
            "video_size": f"{cfg.video_size[0]}×{cfg.video_size[1]}"}


def _train(cfg: DemoConfig, world: World, out: Path, samples: int, shards: int, ml: Tracker, demo_id: str,
           ray_address: str | None) -> dict[str, Any]:
    from jobs.train import run_train

    if samples < 1:
        raise ValueError("preprocessing produced no usable training clip (see the manifest)")
    workers = max(1, min(cfg.workers, shards))  # each worker streams whole shards
    stages = [{"name": name, "steps": cfg.steps_per_stage, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps}
              for name in ("branch", "lora")]
    tcfg = TrainConfig.model_validate({
        "name": "demo", "storage_path": str(out / "train"),
        "model": {"preset": cfg.preset, "vae": world.vae, "init": world.init,
                  "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_rank, "dropout": 0.05}},
        "data": {**world.sample_layout(cfg), "shards": str(out / "shards")},
        "memory": world.memory,
        "stages": stages,
        "optim": {"batch_size": 1, "grad_accum": 1, "grad_clip": 1.0},
        "scaling": {"num_workers": workers, "use_gpu": False, "cpus_per_worker": cfg.cpus_per_worker},
        "checkpoint": {"every": cfg.checkpoint_every, "keep": 2, "max_failures": 0},
        "mlflow": {"tracking_uri": ml.tracking_uri, "experiment": cfg.mlflow.experiment},
        "validation": {"samples": min(2, samples), "every": cfg.val_every, "video": cfg.rollout_video,
                       "video_steps": 2},
        "seed": cfg.seed, "ray_address": ray_address,
    })
    summary = run_train(tcfg)
    run_id = summary["run_id"]
    train_run = Tracker.attach(ml.tracking_uri, run_id)
    train_run.set_tags({"mirage.demo": demo_id})
    loss, val = train_run.metric_history("loss"), train_run.metric_history("val_loss")
    k = max(1, min(10, len(loss) // 4))
    bounds, lo = [], 0
    for s in stages:
        bounds.append((s["name"], lo, lo + s["steps"]))
        lo += s["steps"]
    ckpt = summary.get("checkpoint")
    if not ckpt:
        raise RuntimeError("training finished without a checkpoint")
    return {
        "run_id": run_id, "checkpoint": str(ckpt), "seconds": summary["seconds"], "samples": summary["samples"],
        "summary": summary["summary"],
        "workers": workers, "steps": tcfg.total_steps, "state": summary.get("state", {}),
        "stages": [{**s, "trains": "memory branch (backbone frozen)" if s["name"] == "branch"
                    else "LoRA on the backbone (branch frozen)"} for s in stages],
        "stage_bounds": bounds, "loss": loss, "val_loss": val, "loss_window": k,
        "loss_start": sum(v for _, v in loss[:k]) / k if loss else None,
        "loss_end": sum(v for _, v in loss[-k:]) / k if loss else None,
        "val_loss_start": val[0][1] if val else None, "val_loss_end": val[-1][1] if val else None,
    }


def _generate(cfg: DemoConfig, world: World, out: Path, checkpoint: str, timed, echo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generation for each memory mode + a ground-truth render; returns (result, frames by name)."""
    import numpy as np

    from jobs.config import GeneratorModelConfig
    from jobs.generate_batch import load_generator, resolve_device
    from mirage_model.evaluation.revisit import MAX_PSNR_DB, psnr, revisit_consistency, revisit_pairs
    from mirage_model.generation import readout_frames, save_outputs
    from mirage_model.generation.generator import CHUNK_FRAMES, chunk_starts
    from mirage_model.geometry.formats import write_re10k
    from mirage_model.geometry.trajectory import pan_and_return
    from mirage_model.io.images import to_uint8
    from mirage_model.io.video import write_video
    from mirage_model.synthetic import default_scene, render_trajectory

    size = cfg.gen_size
    gen_dir = out / "generate"
    traj = pan_and_return(cfg.gen_frames, yaw_degrees=cfg.yaw_degrees, translation=cfg.translation, image_size=size)
    frames: dict[str, Any] = {}
    result: dict[str, Any] = {
        "frames": cfg.gen_frames, "height": size[0], "width": size[1], "yaw_degrees": cfg.yaw_degrees,
        "translation": list(cfg.translation), "output": str(gen_dir), "chunk_frames": CHUNK_FRAMES,
        "chunk_starts": chunk_starts(cfg.gen_frames), "revisit_pairs": [list(p) for p in revisit_pairs(traj)],
        "trajectory": {"centers": traj.c2w[:, :3, 3].tolist(), "forward": traj.c2w[:, :3, 2].tolist()},
        "modes": {},
    }

    with timed("reference", "4. ground-truth render", f"{cfg.gen_frames} frames of the synthetic scene"):
        scene = default_scene(cfg.seed, texture_scale=cfg.texture_scale)
        ref = render_trajectory(scene, traj.K, traj.c2w, size, fps=16.0)
        ref_frames = to_uint8(ref.rgb.numpy())
        (gen_dir / "reference").mkdir(parents=True, exist_ok=True)
        result["reference"] = write_video(gen_dir / "reference" / "video.mp4", ref_frames, 16)
        write_re10k(gen_dir / "cameras.txt", traj, fps=16)
        result["cameras"] = str(gen_dir / "cameras.txt")
        result["reference_revisit"] = revisit_consistency(ref_frames, traj)
        frames["reference"] = ref_frames
        image, first_depth = ref_frames[0], ref.depth[0]

    with timed("load_model", "4. load trained model", f"{cfg.preset} preset + the demo's checkpoint"):
        device = resolve_device(cfg.generation.device)
        gen = load_generator(GeneratorModelConfig(preset=cfg.preset, seed=cfg.seed, checkpoint=checkpoint,
                                                  vae=world.vae), device)

    for mode in cfg.modes:
        gcfg = cfg.generation.model_copy(update={"memory": mode, "progress": cfg.progress, "device": device})
        t0 = time.perf_counter()
        with timed(f"generate_{mode}", f"4. generate ({mode})",
                   f"{cfg.gen_frames} frames, {len(result['chunk_starts'])} chunk(s) × {cfg.generation.steps} steps"):
            res = gen.generate(image, cfg.prompt, traj, gcfg, first_depth=first_depth)
            paths = save_outputs(res, traj, gen_dir / mode, fps=gcfg.fps)
            rc = revisit_consistency(res.frames, traj)
        seconds = time.perf_counter() - t0
        frames[mode] = res.frames
        shown = readout_frames(gen.vae, res)
        if shown is not None:
            frames[f"{READOUT_PREFIX}{mode}"] = shown
        back = sorted({j for _, j in revisit_pairs(traj)})
        per_frame = [psnr(ref_frames[j], res.frames[j], max_db=MAX_PSNR_DB) for j in range(len(ref_frames))]
        gt_psnr = float(np.mean([per_frame[j] for j in back])) if back else float("nan")
        result["modes"][mode] = {"video": paths["video"], "cameras": paths["cameras"], "chunks_json": paths["chunks"],
                                 "chunks": res.chunk_stats, "revisit": rc, "seconds": seconds,
                                 "revisit_psnr_gt": gt_psnr, "revisit_consistency_psnr": rc["psnr"],
                                 "psnr_gt_per_frame": [round(float(p), 3) for p in per_frame],
                                 "settings": res.settings.model_dump(mode="json")}
        last = res.chunk_stats[-1]
        echo(f"      {mode:>6}: {seconds:5.1f} s, revisit PSNR vs ground truth {gt_psnr:.2f} dB, out vs back "
             f"{rc['psnr']:.2f} dB / SSIM {rc['ssim']:.3f} "
             f"({rc['pairs']} pairs), memory {last['cache_points']} points / {last['cache_bytes'] / 1024:.1f} KiB")
    result["settings"] = {"steps": cfg.generation.steps, "seed": cfg.generation.seed, "prompt": cfg.prompt}
    return result, frames


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def run_demo(out_dir: str | os.PathLike | None = None, quick: bool = False, *, steps_per_stage: int | None = None,
             config: DemoConfig | None = None, ray_address: str | None = None, fresh: bool = True,
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the result dict (also ``<out>/demo.json``).

    Keys: ``demo_id``, ``status``, ``total_s``, ``report``, ``summary_json``, ``config``, ``timings``
    (list of ``{stage, key, detail, seconds}``), ``preprocess`` (inputs, samples, status, reason,
    manifest, ...), ``train`` (run_id, checkpoint, steps, loss / val_loss histories and start / end),
    ``generate`` (``modes[mode]`` with video, chunks, revisit {psnr, ssim, pairs}, seconds; the
    trajectory; the reference render), ``mlflow`` (tracking_uri, experiment_id, run_id, train_run_id,
    ui_command).
    """
    import ray

    from jobs import report as report_mod

    echo = echo or (lambda s: print(s, flush=True))
    cfg = config or DemoConfig.for_variant(quick, steps_per_stage=steps_per_stage,
                                           out=None if out_dir is None else str(out_dir), ray_address=ray_address)
    out_dir, ray_address = cfg.out, cfg.ray_address
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    out = Path(out_dir).resolve()
    world = World.of(cfg)  # before any stage runs: a wrong path would only surface in the workers
    _prepare_out(out, fresh)
    t_start = time.perf_counter()
    demo_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    result: dict[str, Any] = {
        "demo_id": demo_id, "status": "running", "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": f"{platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()}",
        "out_dir": str(out), "config": cfg.model_dump(mode="json"), "world": dataclasses.asdict(world),
        "timings": [],
        "report": str(out / report_mod.REPORT_NAME), "summary_json": str(out / "demo.json"),
    }
    ml = _open_tracker(cfg, out, demo_id)
    ui = f"{_mlflow_command()} ui --backend-store-uri {ml.tracking_uri} --port 5000"
    result["mlflow"] = {"tracking_uri": ml.tracking_uri, "experiment": cfg.mlflow.experiment,
                        "experiment_id": ml.experiment_id, "run_id": ml.run_id, "ui_command": ui,
                        "ui_url": ml.ui_url(), "artifact_root": (out / "mlartifacts").as_uri()}
    frames: dict[str, Any] = {}
    current = {"stage": "start"}

    @contextlib.contextmanager
    def timed(key: str, stage: str, detail: str = "") -> Iterator[None]:
        current["stage"] = stage
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        result["timings"].append({"stage": stage, "key": key, "detail": detail, "seconds": seconds})
        ml.log_metrics({f"time.{key}_s": seconds})

    started_ray = not ray.is_initialized()
    try:
        echo(f"[1/5] synthesising {cfg.n_videos} videos ({cfg.video_frames} frames, {cfg.video_size[0]}x"
             f"{cfg.video_size[1]}) -> {out / 'videos'}")
        with timed("synthesise", "1. synthesise", f"{cfg.n_videos} videos × {cfg.video_frames} frames, "
                   f"{cfg.video_size[0]}×{cfg.video_size[1]}"):
            result["synthesise"] = _synthesise(cfg, out)

        poses = "SfM poses" if cfg.poses == "sfm" else "poses from the camera files"
        echo(f"[2/5] preprocessing with Ray Data ({poses}, depth, masks, latents) -> {out / 'shards'}")
        with timed("preprocess", "2. preprocess (Ray Data)", f"{poses}, plane-sweep depth, flow masks, "
                   f"{'the world VAE' if world.vae else 'tiny-VAE'} latents"):
            pre = result["preprocess"] = _preprocess(cfg, world, out, ray_address)
        rejected = sum(v for k, v in pre["status"].items() if k != "ok")
        echo(f"      {pre['samples']} clips in {pre['shards']} shards, {rejected} rejected"
             + (f" ({', '.join(f'{k}: {v}' for k, v in pre['reason'].items())})" if pre["reason"] else ""))
        ml.log_metrics({"data.samples": pre["samples"], "data.rejected": rejected})

        echo(f"[3/5] training the `{cfg.preset}` model with Ray Train"
             + (f", from the world in {cfg.world}" if world.init else ", from random weights")
             + f": {cfg.steps_per_stage} steps memory branch + {cfg.steps_per_stage} steps LoRA on "
             f"{min(cfg.workers, max(1, pre['samples']))} workers")
        with timed("train", "3. train (Ray Train)", f"{cfg.preset} preset, 2 × {cfg.steps_per_stage} steps"):
            tr = result["train"] = _train(cfg, world, out, pre["samples"], pre["shards"], ml, demo_id, ray_address)
        result["mlflow"].update({"train_run_id": tr["run_id"],
                                 "train_ui_url": ml.ui_url().replace(ml.run_id, tr["run_id"])})
        ml.set_tags({"mirage.train_run": tr["run_id"]})
        ml.log_metrics({k: tr[k] for k in ("loss_start", "loss_end", "val_loss_start", "val_loss_end")}
                   | {"train.steps": tr["steps"]})
        echo(f"      loss {tr['loss_start']:.3f} -> {tr['loss_end']:.3f}, validation loss "
             f"{tr['val_loss_start']:.3f} -> {tr['val_loss_end']:.3f}; checkpoint {tr['checkpoint']}")
        if started_ray and ray.is_initialized():
            ray.shutdown()  # generation runs in this process: give its CPUs back

        echo(f"[4/5] generating {cfg.gen_frames} frames along a pan-and-return path (yaw 0 -> {cfg.yaw_degrees:g} -> 0 deg)"
             f" with memory {', '.join(cfg.modes)}")
        result["generate"], frames = _generate(cfg, world, out, result["train"]["checkpoint"], timed, echo)
        for mode, v in result["generate"]["modes"].items():
            ml.log_metrics({f"revisit.{mode}.psnr": v["revisit"]["psnr"], f"revisit.{mode}.ssim": v["revisit"]["ssim"],
                        f"revisit.{mode}.pairs": v["revisit"]["pairs"]})
            for c in v["chunks"]:
                ml.log_metrics({f"cache.{mode}.points": c["cache_points"], f"cache.{mode}.bytes": c["cache_bytes"],
                            f"gen.{mode}.seconds_per_frame": c["seconds_per_frame"],
                            f"gen.{mode}.hole_rate": c["hole_rate"]}, step=c["chunk"])

        echo(f"[5/5] writing the report and logging to MLflow ({ml.tracking_uri})")
        with timed("report", "5. report + MLflow", "plots, HTML, artifacts"):
            figures = report_mod.make_figures(out, result, frames)
            result["status"] = "finished"
            result["total_s"] = time.perf_counter() - t_start
            report_mod.write_report(out, result, figures)
            _atomic_json(out / "demo.json", result)
            _log_artifacts(ml, out, result)
        result["total_s"] = time.perf_counter() - t_start
        ml.log_metrics({"time.total_s": result["total_s"]})
        report_mod.write_report(out, result, figures)  # again, with the final total
        _atomic_json(out / "demo.json", result)
        write_summary(job_summary(
            "demo", result["total_s"], inputs=cfg.n_videos, accepted=pre["status"].get("ok", 0), rejected=pre["reason"],
            clips=pre["samples"], stage_seconds={t["key"]: t["seconds"] for t in result["timings"]},
            details={"preprocess": str(out / "shards" / SUMMARY_FILE), "train": tr["summary"],
                     "demo": str(out / "demo.json")}), str(out / SUMMARY_FILE), tracker=ml)
        ml.log_artifact(str(out / report_mod.REPORT_NAME))
        ml.log_artifact(str(out / "demo.json"))
        ml.finish()
    except BaseException as exc:
        result["status"] = f"failed in {current['stage']}: {type(exc).__name__}: {exc}"
        result["total_s"] = time.perf_counter() - t_start
        with contextlib.suppress(Exception):
            report_mod.write_report(out, result, report_mod.make_figures(out, result, frames or None))
            _atomic_json(out / "demo.json", result)
        with contextlib.suppress(Exception):
            ml.finish("FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()

    total = result["total_s"]
    echo(f"done in {int(total // 60)} min {total % 60:.0f} s ({'within' if total <= cfg.budget_s else 'over'} the "
         f"{cfg.budget_s / 60:.0f}-minute budget)")
    echo(f"report: {out / report_mod.REPORT_NAME}   (open it in a browser; the videos sit next to it)")
    echo(f"MLflow: demo run {ml.run_id}, training run {result['train']['run_id']} in experiment {cfg.mlflow.experiment}")
    echo(f"        open the UI with:  {ui}   then browse http://127.0.0.1:5000")
    return result


def _log_artifacts(ml: Tracker, out: Path, result: dict[str, Any]) -> None:
    """Report, figures, videos (same relative layout as on disk, so the report's links hold)."""
    ml.log_artifact(str(out / "report.html"))
    if (out / "report_assets").is_dir():
        ml.log_artifacts(str(out / "report_assets"), "report_assets")
    gen = out / "generate"
    for sub in sorted(p for p in gen.iterdir() if p.is_dir()) if gen.is_dir() else []:
        ml.log_artifacts(str(sub), f"generate/{sub.name}")
    if (gen / "cameras.txt").exists():
        ml.log_artifact(str(gen / "cameras.txt"), "generate")
    manifest = (result.get("preprocess") or {}).get("manifest")
    if manifest and Path(manifest).is_file():
        ml.log_artifact(manifest, "shards")


__all__ = ["DemoConfig", "run_demo"]
