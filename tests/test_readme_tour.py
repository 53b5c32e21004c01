"""README's five-minute tour, run as written: each command of its code block in order, as a new user
runs them from the checkout (here: a temporary directory holding the checkout's `configs/` and
`assets/`, so that everything the tour writes lands in that directory's `runs/`), the cluster part
against a Ray head started on this machine. Each step is checked for what the README says it
produces.

Changes to the commands, all for time on a 2-core CI machine, none to a path or a flag the README
gives: `--set` overrides that shorten training and generation are appended; `VIDEOS` is the demo's
own videos with their camera files (`poses.method=file`); `make install` is this test's own venv;
`ray start --head` is the `ray_head` fixture (the same command on free ports), whose address
replaces `http://127.0.0.1:8265`; `mlflow ui` is replaced by reading the store it would open. The
test fails when the README's tour changes, so that the two stay one.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_submit import ray_head  # noqa: F401 - the fixture, started when the tour reaches the cluster

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

SHORT_TRAIN = ["--set", "stages.0.steps=2", "--set", "stages.1.steps=2", "--set", "validation.video=false",
               "--set", "validation.samples=1", "--set", "checkpoint.every=2"]
DEMO = ["--set", "n_videos=1", "--set", "steps_per_stage=5", "--set", "val_every=5", "--set", "checkpoint_every=5",
        "--set", "rollout_video=false", "--set", "gen_frames=33", "--set", "generation.steps=2",
        "--set", "progress=false"]

# README command (comment stripped) -> what this test appends (or None: the step is replaced, see above)
TOUR = {
    "make install && source .venv/bin/activate": None,
    "mirage demo": DEMO,
    "mirage preprocess --config configs/preprocess/default.yaml --source VIDEOS --output runs/shards":
        ["--set", "poses.method=file"],
    "mirage train --config configs/train/tiny.yaml --shards runs/shards": ["--workers", "1", *SHORT_TRAIN],
    "mirage export-model runs/train/tiny --out runs/model": [],
    "mirage generate-batch --config configs/generate_batch/default.yaml": ["--set", "frames=33",
                                                                          "--set", "generation.steps=2"],
    "mirage generate --synthetic --texture-scale 3 --height 128 --width 160 --out runs/gen":
        ["--frames", "33", "--steps", "2"],
    "mirage generate --synthetic --checkpoint runs/train/tiny --out runs/gen-tiny": ["--frames", "33", "--steps", "2"],
    "ray start --head --dashboard-host 127.0.0.1": None,
    "mirage submit train --address http://127.0.0.1:8265 --config configs/train/tiny.yaml -- --name tiny-cluster":
        ["--workers", "1", *SHORT_TRAIN],
    "mirage jobs list --address http://127.0.0.1:8265": [],
    "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db": None,
}


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## A five-minute tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].split(" # ", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_the_tour_is_the_one_this_test_runs():
    assert tour_commands() == list(TOUR), "README's tour changed: update TOUR and the checks below"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_tour_runs_as_written(tmp_path, request):
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("configs", "assets"):
        (work / name).symlink_to(ROOT / name)
    address = None
    seconds: dict[str, float] = {}

    def run(command: str, extra: list[str]) -> str:
        argv = shlex.split(command)
        argv = [a.replace("VIDEOS", "runs/demo/videos") if a == "VIDEOS" else a for a in argv]
        if address:
            argv = [address if a == "http://127.0.0.1:8265" else a for a in argv]
        # the environment as it is now: the head's fixture sets RAY_AUTH_MODE for its clients
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "PYTHONPATH"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        t0 = time.monotonic()
        done = subprocess.run([*argv, *extra], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        seconds[command] = round(time.monotonic() - t0, 1)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"`{command}` failed after {seconds}:\n{out[-4000:]}"
        return out

    outputs: dict[str, str] = {}
    for command, extra in TOUR.items():
        if command.startswith("ray start"):
            address = request.getfixturevalue("ray_head")["address"]
            continue
        if extra is None:
            continue
        outputs[command] = run(command, extra)

    print("seconds per tour command:", json.dumps(seconds, indent=1))
    runs = work / "runs"
    check_demo(runs / "demo", outputs["mirage demo"])

    manifest = [json.loads(x) for x in (runs / "shards" / "manifest.jsonl").read_text().splitlines() if x.strip()]
    assert [m["status"] for m in manifest if m.get("kind", "input") == "input"].count("ok") >= 1, manifest
    assert list((runs / "shards").glob("*.tar"))

    ckpts = sorted((runs / "train" / "tiny").glob("checkpoint_*"))
    assert ckpts and json.loads((runs / "train" / "tiny" / "summary.json").read_text())["job"] == "train"
    exported = {p.name for p in (runs / "model").iterdir()}
    assert {"model.json", "pytorch_lora_weights.safetensors"} <= exported, exported
    assert any("branch" in name for name in exported), exported

    items = [p for p in (runs / "generate_batch").iterdir() if p.is_dir()]
    assert items and all((p / "metrics.json").is_file() and (p / "video.mp4").is_file() for p in items)
    for gen in ("gen", "gen-tiny"):
        assert (runs / gen / "video.mp4").is_file() and (runs / gen / "cameras.txt").is_file(), gen

    submitted = outputs["mirage submit train --address http://127.0.0.1:8265 --config configs/train/tiny.yaml "
                        "-- --name tiny-cluster"]
    assert f"data.shards: runs/demo/shards -> {work}/runs/demo/shards" in submitted
    assert sorted((runs / "train" / "tiny-cluster").glob("checkpoint_*"))
    listing = outputs["mirage jobs list --address http://127.0.0.1:8265"]
    assert "SUCCEEDED" in listing and "train" in listing

    # what `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows: every job of the tour
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    finished = {}
    for exp in ("mirage-preprocess", "mirage-train", "mirage-generate-batch"):
        experiment = client.get_experiment_by_name(exp)
        assert experiment is not None, f"no {exp} experiment in runs/mlflow.db"
        finished[exp] = [r.info.run_name for r in client.search_runs([experiment.experiment_id])
                         if r.info.status == "FINISHED"]
    assert sorted(finished["mirage-train"]) == ["tiny", "tiny-cluster"], finished
    assert finished["mirage-preprocess"] and finished["mirage-generate-batch"], finished


def check_demo(out: Path, log: str) -> None:
    """`mirage demo`: the five stages, the report with the three memories, its MLflow runs."""
    from mlflow.tracking import MlflowClient

    from mirage_model.io.video import decode

    result = json.loads((out / "demo.json").read_text())
    assert result["status"] == "finished"
    assert re.findall(r"^\[\d/5\]", log, re.M) == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert "mlflow ui --backend-store-uri sqlite:///" in log

    report = out / "report.html"
    text = report.read_text()
    assert "http://" not in text.replace("http://127.0.0.1:5000", "") and "https://" not in text
    for label in ("latent memory (Mirage)", "RGB point cache", "no memory"):
        assert label in text
    for name in ("loss", "trajectory", "memory", "frames", "psnr", "readout_latent", "readout_rgb"):
        img = out / "report_assets" / f"{name}.png"
        assert img.read_bytes()[:4] == b"\x89PNG" and f'src="report_assets/{name}.png"' in text
    assert 'id="readout-latent"' in text and 'id="readout-rgb"' in text and 'id="readout-none"' not in text
    gen = result["generate"]
    assert set(gen["modes"]) == {"latent", "rgb", "none"}
    for v in gen["modes"].values():
        assert len(v["psnr_gt_per_frame"]) == gen["frames"]
    for mode, v in gen["modes"].items():
        r = v["revisit"]
        assert r["pairs"] > 0 and math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
        assert f"{r['psnr']:.2f}" in text and f"{r['ssim']:.3f}" in text
        chunks = v["chunks"]
        assert len(chunks) == 1  # 33 frames: one chunk
        assert (chunks[-1]["cache_bytes"] == 0) if mode == "none" else (chunks[-1]["cache_points"] > 0)
        rel = Path(v["video"]).relative_to(out.resolve()).as_posix()
        assert f'src="{html.escape(rel)}"' in text
        assert decode(v["video"]).frames.shape == (33, 128, 160, 3)  # the world's size
    assert gen["modes"]["latent"]["chunks"][-1]["cache_bytes"] < gen["modes"]["rgb"]["chunks"][-1]["cache_bytes"]

    keys = [t["key"] for t in result["timings"]]
    for key in ("synthesise", "preprocess", "train", "generate_latent", "generate_rgb", "generate_none"):
        assert key in keys
    for t in result["timings"]:
        assert t["seconds"] > 0 and html.escape(t["stage"]) in text

    pre, tr = result["preprocess"], result["train"]
    assert pre["inputs"] == 1 and pre["samples"] >= 1 and f"{pre['samples']} training clips" in text
    assert tr["steps"] == 10 and Path(tr["checkpoint"], "trainable.safetensors").is_file()
    assert [s for s, _ in tr["loss"]] == list(range(1, 11)) and tr["val_loss"]

    ml = result["mlflow"]
    client = MlflowClient(ml["tracking_uri"])
    run = client.get_run(ml["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mirage.demo"] == result["demo_id"]
    for mode in ("latent", "rgb", "none"):
        assert run.data.metrics[f"revisit.{mode}.psnr"] == pytest.approx(gen["modes"][mode]["revisit"]["psnr"])
    assert {"report.html", "report_assets", "generate"} <= {a.path for a in client.list_artifacts(ml["run_id"])}
    assert client.get_run(ml["train_run_id"]).data.tags["mirage.demo"] == result["demo_id"]
    acct = json.loads((out / "summary.json").read_text())
    assert acct["job"] == "demo" and acct["clips"] == pre["samples"]
