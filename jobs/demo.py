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
import math
import os
import platform
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

EXPERIMENT = "mirage-demo"
MARKER = ".mirage-demo"
OWNED = ("videos", "shards", "train", "generate", "report_assets", "report.html", "demo.json")
"""What a fresh run removes from a directory a previous demo wrote (never mlflow.db / mlartifacts)."""


@dataclass
class DemoConfig:
    """Sizes and steps of the demo. Defaults: the full demo, about 3 minutes on 2 idle cores (measured
    2 min 43 s; about 11 minutes when other jobs load both cores), inside the issue's 15-minute bound."""

    quick: bool = False
    seed: int = 0
    # 1. synthetic videos (seed 1: every video registers in SfM at this size)
    n_videos: int = 4
    video_frames: int = 40
    video_size: tuple[int, int] = (128, 160)
    data_seed: int = 1
    # 2. preprocessing (one 33-frame clip per video: 9 latents)
    clip_frames: int = 33
    # 3. training
    preset: str = "small"
    steps_per_stage: int = 300
    lr: float = 1e-3
    warmup_steps: int = 10
    target_latents: int = 5  # 17-frame targets after 2 preceding latents: 3 valid starts per 33-frame clip
    lora_rank: int = 8
    workers: int = 2
    cpus_per_worker: float = 0.5  # leaves a CPU for the Ray Data reads on 2 cores
    val_every: int = 25
    checkpoint_every: int = 100
    rollout_video: bool = True  # the train job's own validation rollout (logged to its MLflow run)
    # 4. generation
    gen_frames: int = 97  # 33 + 32k: three chunks
    gen_size: tuple[int, int] = (128, 160)
    gen_steps: int = 10
    yaw_degrees: float = 60.0
    translation: tuple[float, float, float] = (0.3, 0.0, 0.0)
    modes: tuple[str, ...] = ("latent", "rgb", "none")
    prompt: str = "a room with furniture, the camera turns right and comes back"
    progress: bool = True
    budget_s: float = 900.0  # the bound on one 2-core machine (reported, not enforced)

    def __post_init__(self) -> None:
        self.video_size = tuple(int(v) for v in self.video_size)
        self.gen_size = tuple(int(v) for v in self.gen_size)
        self.translation = tuple(float(v) for v in self.translation)
        self.modes = tuple(self.modes)
        if self.preset not in ("tiny", "small"):
            raise ValueError(f"preset: the demo trains a random-weight CPU preset ('tiny' or 'small'), got {self.preset!r}")
        if self.steps_per_stage < 1:
            raise ValueError(f"steps_per_stage must be >= 1, got {self.steps_per_stage}")
        if self.gen_frames < 33 or (self.gen_frames - 33) % 32:
            raise ValueError(f"gen_frames must be 33 + 32k, got {self.gen_frames}")
        if self.gen_size[0] % 32 or self.gen_size[1] % 32:
            raise ValueError(f"gen_size must be multiples of 32, got {self.gen_size}")
        if self.video_frames < self.clip_frames:
            raise ValueError(f"video_frames ({self.video_frames}) must be >= clip_frames ({self.clip_frames})")
        bad = [m for m in self.modes if m not in ("latent", "rgb", "none")]
        if bad or not self.modes:
            raise ValueError(f"modes: choose from latent, rgb, none; got {self.modes}")

    @classmethod
    def for_variant(cls, quick: bool = False, **overrides: Any) -> "DemoConfig":
        """The full demo or the quick (test) variant, with ``overrides`` (None values ignored)."""
        values: dict[str, Any] = dict(QUICK) if quick else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(quick=quick, **values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


QUICK: dict[str, Any] = dict(
    n_videos=2, preset="tiny", steps_per_stage=10, warmup_steps=2, val_every=5, checkpoint_every=10,
    rollout_video=False, gen_frames=33, gen_size=(64, 96), gen_steps=2, progress=False, budget_s=180.0,
)
"""The shortened variant (``--quick``, the end-to-end test): about 1 minute on 2 idle cores."""


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
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


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


class _Mlflow:
    """The demo's own MLflow run (created up front so the report can link it)."""

    def __init__(self, out: Path, demo_id: str, cfg: DemoConfig):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.tracking_uri = "sqlite:///" + str(out / "mlflow.db")
        self.client = MlflowClient(self.tracking_uri)
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = (exp.experiment_id if exp else
                              self.client.create_experiment(EXPERIMENT, artifact_location=(out / "mlartifacts").as_uri()))
        run = self.client.create_run(self.experiment_id, run_name=demo_id,
                                     tags={"mirage.job": "demo", "mirage.demo": demo_id,
                                           "mirage.variant": "quick" if cfg.quick else "full"})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in sorted(cfg.to_dict().items())]
        params += [Param("demo_id", demo_id), Param("out_dir", str(out))]
        self.client.log_batch(self.run_id, params=params)

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items() if _finite(v)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def ui_url(self, run_id: str) -> str:
        return f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{run_id}"


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
def _synthesise(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from pipeline.synth_data import make_synthetic_dataset

    paths = make_synthetic_dataset(out / "videos", cfg.n_videos, seed=cfg.data_seed, frames=cfg.video_frames,
                                   size=cfg.video_size)
    return {"videos": [str(p) for p in paths], "dir": str(out / "videos")}


def _preprocess(cfg: DemoConfig, out: Path, ray_address: str | None) -> dict[str, Any]:
    from jobs.preprocess import run_preprocess
    from pipeline.config import PreprocessConfig

    pcfg = PreprocessConfig.model_validate({
        "source": str(out / "videos"), "output": str(out / "shards"),
        "clip": {"frames": cfg.clip_frames, "max_clips": 1}, "latents": {"vae": "tiny"},
        "inputs_per_shard": 2, "ray_address": ray_address,
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


def _train(cfg: DemoConfig, out: Path, samples: int, ml: _Mlflow, demo_id: str,
           ray_address: str | None) -> dict[str, Any]:
    from jobs.train import run_train
    from jobs.train_config import TrainConfig

    if samples < 1:
        raise ValueError("preprocessing produced no usable training clip (see the manifest)")
    workers = max(1, min(cfg.workers, samples))
    stages = [{"name": name, "steps": cfg.steps_per_stage, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps}
              for name in ("branch", "lora")]
    tcfg = TrainConfig.model_validate({
        "name": "demo", "storage_path": str(out / "train"),
        "model": {"preset": cfg.preset, "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_rank, "dropout": 0.05}},
        "data": {"shards": str(out / "shards"), "target_latents": cfg.target_latents, "preceding": 2,
                 "t0_min": 8, "t0_max": 48},
        "stages": stages,
        "optim": {"batch_size": 1, "grad_accum": 1, "grad_clip": 1.0},
        "scaling": {"num_workers": workers, "use_gpu": False, "cpus_per_worker": cfg.cpus_per_worker},
        "checkpoint": {"every": cfg.checkpoint_every, "keep": 2, "max_failures": 0},
        "mlflow": {"tracking_uri": ml.tracking_uri, "experiment": EXPERIMENT},
        "validation": {"samples": min(2, samples), "every": cfg.val_every, "video": cfg.rollout_video,
                       "video_steps": 2},
        "seed": cfg.seed, "ray_address": ray_address,
    })
    summary = run_train(tcfg)
    run_id = summary["run_id"]
    ml.client.set_tag(run_id, "mirage.demo", demo_id)
    loss = sorted(((m.step, m.value) for m in ml.client.get_metric_history(run_id, "loss")))
    val = sorted(((m.step, m.value) for m in ml.client.get_metric_history(run_id, "val_loss")))
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
        "workers": workers, "steps": tcfg.total_steps, "state": summary.get("state", {}),
        "stages": [{**s, "trains": "memory branch (backbone frozen)" if s["name"] == "branch"
                    else "LoRA on the backbone (branch frozen)"} for s in stages],
        "stage_bounds": bounds, "loss": loss, "val_loss": val, "loss_window": k,
        "loss_start": sum(v for _, v in loss[:k]) / k if loss else None,
        "loss_end": sum(v for _, v in loss[-k:]) / k if loss else None,
        "val_loss_start": val[0][1] if val else None, "val_loss_end": val[-1][1] if val else None,
    }


def _generate(cfg: DemoConfig, out: Path, checkpoint: str, timed, echo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generation for each memory mode + a ground-truth render; returns (result, frames by name)."""
    import numpy as np

    from mirage_model.evaluation.revisit import revisit_consistency, revisit_pairs
    from mirage_model.generation import GenerationConfig, MirageGenerator, save_outputs
    from mirage_model.generation.generator import CHUNK_FRAMES, chunk_starts
    from mirage_model.geometry.formats import write_re10k
    from mirage_model.geometry.trajectory import pan_and_return
    from mirage_model.synthetic import default_scene, render_trajectory
    from pipeline.video import write_video

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
        scene = default_scene(cfg.seed)
        ref = render_trajectory(scene, traj.K, traj.c2w, size, fps=16.0)
        ref_frames = (ref.rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        (gen_dir / "reference").mkdir(parents=True, exist_ok=True)
        result["reference"] = write_video(gen_dir / "reference" / "video.mp4", ref_frames, 16)
        write_re10k(gen_dir / "cameras.txt", traj, fps=16)
        result["cameras"] = str(gen_dir / "cameras.txt")
        result["reference_revisit"] = revisit_consistency(ref_frames, traj)
        frames["reference"] = ref_frames
        image, first_depth = ref_frames[0], ref.depth[0]

    with timed("load_model", "4. load trained model", f"{cfg.preset} preset + branch/LoRA checkpoint"):
        gen = MirageGenerator.from_preset(cfg.preset, seed=cfg.seed).load_training_checkpoint(checkpoint)

    for mode in cfg.modes:
        gcfg = GenerationConfig(steps=cfg.gen_steps, memory=mode, seed=cfg.seed, progress=cfg.progress)
        t0 = time.perf_counter()
        with timed(f"generate_{mode}", f"4. generate ({mode})",
                   f"{cfg.gen_frames} frames, {len(result['chunk_starts'])} chunk(s) × {cfg.gen_steps} steps"):
            res = gen.generate(image, cfg.prompt, traj, gcfg, first_depth=first_depth)
            paths = save_outputs(res, traj, gen_dir / mode, config=gcfg)
            rc = revisit_consistency(res.frames, traj)
        seconds = time.perf_counter() - t0
        frames[mode] = res.frames
        result["modes"][mode] = {"video": paths["video"], "cameras": paths["cameras"], "chunks_json": paths["chunks"],
                                 "chunks": res.chunk_stats, "revisit": rc, "seconds": seconds,
                                 "settings": dataclasses.asdict(gcfg)}
        last = res.chunk_stats[-1]
        echo(f"      {mode:>6}: {seconds:5.1f} s, revisit PSNR {rc['psnr']:.2f} dB / SSIM {rc['ssim']:.3f} "
             f"({rc['pairs']} pairs), memory {last['cache_points']} points / {last['cache_bytes'] / 1024:.1f} KiB")
    result["settings"] = {"steps": cfg.gen_steps, "seed": cfg.seed, "prompt": cfg.prompt}
    return result, frames


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def run_demo(out_dir: str | os.PathLike = "runs/demo", quick: bool = False, *, steps_per_stage: int | None = None,
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
    cfg = config or DemoConfig.for_variant(quick, steps_per_stage=steps_per_stage)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    out = Path(out_dir).resolve()
    _prepare_out(out, fresh)
    t_start = time.perf_counter()
    demo_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    result: dict[str, Any] = {
        "demo_id": demo_id, "status": "running", "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": f"{platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()}",
        "out_dir": str(out), "config": cfg.to_dict(), "timings": [],
        "report": str(out / report_mod.REPORT_NAME), "summary_json": str(out / "demo.json"),
    }
    ml = _Mlflow(out, demo_id, cfg)
    ui = f"{_mlflow_command()} ui --backend-store-uri {ml.tracking_uri} --port 5000"
    result["mlflow"] = {"tracking_uri": ml.tracking_uri, "experiment": EXPERIMENT, "experiment_id": ml.experiment_id,
                        "run_id": ml.run_id, "ui_command": ui, "ui_url": ml.ui_url(ml.run_id),
                        "artifact_root": (out / "mlartifacts").as_uri()}
    frames: dict[str, Any] = {}
    current = {"stage": "start"}

    @contextlib.contextmanager
    def timed(key: str, stage: str, detail: str = "") -> Iterator[None]:
        current["stage"] = stage
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        result["timings"].append({"stage": stage, "key": key, "detail": detail, "seconds": seconds})
        ml.metrics({f"time.{key}_s": seconds})

    started_ray = not ray.is_initialized()
    try:
        echo(f"[1/5] synthesising {cfg.n_videos} videos ({cfg.video_frames} frames, {cfg.video_size[0]}x"
             f"{cfg.video_size[1]}) -> {out / 'videos'}")
        with timed("synthesise", "1. synthesise", f"{cfg.n_videos} videos × {cfg.video_frames} frames, "
                   f"{cfg.video_size[0]}×{cfg.video_size[1]}"):
            result["synthesise"] = _synthesise(cfg, out)

        echo(f"[2/5] preprocessing with Ray Data (SfM poses, depth, masks, latents) -> {out / 'shards'}")
        with timed("preprocess", "2. preprocess (Ray Data)", "SfM poses, plane-sweep depth, flow masks, tiny-VAE latents"):
            pre = result["preprocess"] = _preprocess(cfg, out, ray_address)
        rejected = sum(v for k, v in pre["status"].items() if k != "ok")
        echo(f"      {pre['samples']} clips in {pre['shards']} shards, {rejected} rejected"
             + (f" ({', '.join(f'{k}: {v}' for k, v in pre['reason'].items())})" if pre["reason"] else ""))
        ml.metrics({"data.samples": pre["samples"], "data.rejected": rejected})

        echo(f"[3/5] training the `{cfg.preset}` model with Ray Train: {cfg.steps_per_stage} steps memory branch + "
             f"{cfg.steps_per_stage} steps LoRA on {min(cfg.workers, max(1, pre['samples']))} workers")
        with timed("train", "3. train (Ray Train)", f"{cfg.preset} preset, 2 × {cfg.steps_per_stage} steps"):
            tr = result["train"] = _train(cfg, out, pre["samples"], ml, demo_id, ray_address)
        result["mlflow"].update({"train_run_id": tr["run_id"], "train_ui_url": ml.ui_url(tr["run_id"])})
        ml.client.set_tag(ml.run_id, "mirage.train_run", tr["run_id"])
        ml.metrics({k: tr[k] for k in ("loss_start", "loss_end", "val_loss_start", "val_loss_end")}
                   | {"train.steps": tr["steps"]})
        echo(f"      loss {tr['loss_start']:.3f} -> {tr['loss_end']:.3f}, validation loss "
             f"{tr['val_loss_start']:.3f} -> {tr['val_loss_end']:.3f}; checkpoint {tr['checkpoint']}")
        if started_ray and ray.is_initialized():
            ray.shutdown()  # generation runs in this process: give its CPUs back

        echo(f"[4/5] generating {cfg.gen_frames} frames along a pan-and-return path (yaw 0 -> {cfg.yaw_degrees:g} -> 0 deg)"
             f" with memory {', '.join(cfg.modes)}")
        result["generate"], frames = _generate(cfg, out, result["train"]["checkpoint"], timed, echo)
        for mode, v in result["generate"]["modes"].items():
            ml.metrics({f"revisit.{mode}.psnr": v["revisit"]["psnr"], f"revisit.{mode}.ssim": v["revisit"]["ssim"],
                        f"revisit.{mode}.pairs": v["revisit"]["pairs"]})
            for c in v["chunks"]:
                ml.metrics({f"cache.{mode}.points": c["cache_points"], f"cache.{mode}.bytes": c["cache_bytes"],
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
        ml.metrics({"time.total_s": result["total_s"]})
        report_mod.write_report(out, result, figures)  # again, with the final total
        _atomic_json(out / "demo.json", result)
        ml.client.log_artifact(ml.run_id, str(out / report_mod.REPORT_NAME))
        ml.client.log_artifact(ml.run_id, str(out / "demo.json"))
        ml.client.set_terminated(ml.run_id, status="FINISHED")
    except BaseException as exc:
        result["status"] = f"failed in {current['stage']}: {type(exc).__name__}: {exc}"
        result["total_s"] = time.perf_counter() - t_start
        with contextlib.suppress(Exception):
            report_mod.write_report(out, result, report_mod.make_figures(out, result, frames or None))
            _atomic_json(out / "demo.json", result)
        with contextlib.suppress(Exception):
            ml.client.set_terminated(ml.run_id, status="FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()

    total = result["total_s"]
    echo(f"done in {int(total // 60)} min {total % 60:.0f} s ({'within' if total <= cfg.budget_s else 'over'} the "
         f"{cfg.budget_s / 60:.0f}-minute budget)")
    echo(f"report: {out / report_mod.REPORT_NAME}   (open it in a browser; the videos sit next to it)")
    echo(f"MLflow: demo run {ml.run_id}, training run {result['train']['run_id']} in experiment {EXPERIMENT}")
    echo(f"        open the UI with:  {ui}   then browse http://127.0.0.1:5000")
    return result


def _log_artifacts(ml: _Mlflow, out: Path, result: dict[str, Any]) -> None:
    """Report, figures, videos (same relative layout as on disk, so the report's links hold)."""
    ml.client.log_artifact(ml.run_id, str(out / "report.html"))
    if (out / "report_assets").is_dir():
        ml.client.log_artifacts(ml.run_id, str(out / "report_assets"), "report_assets")
    gen = out / "generate"
    for sub in sorted(p for p in gen.iterdir() if p.is_dir()) if gen.is_dir() else []:
        ml.client.log_artifacts(ml.run_id, str(sub), f"generate/{sub.name}")
    if (gen / "cameras.txt").exists():
        ml.client.log_artifact(ml.run_id, str(gen / "cameras.txt"), "generate")
    manifest = (result.get("preprocess") or {}).get("manifest")
    if manifest and Path(manifest).is_file():
        ml.client.log_artifact(ml.run_id, manifest, "shards")


__all__ = ["DemoConfig", "QUICK", "run_demo"]
