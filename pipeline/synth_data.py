"""Synthetic input videos with exact ground truth, and deliberately bad inputs for tests.

``make_synthetic_dataset`` renders short videos of ``mirage_model.synthetic.default_scene`` along
camera paths that suit SfM: a sideways track of 0.8-1.2 m (good baseline) with a slight pan, at
eye heights 0.9-1.7 m, a random heading, field of view and texture seed per video; a
``moving_fraction`` of the videos contains the rolling ball (their cameras face it) and about a
quarter have an open ceiling (sky). ``camera_paths="fast"`` takes instead a fast one-way path from a random
place and heading (``random_outbound_path``: a pan of 50-100 degrees, an orbit of 40-80 or a dolly of
0.8-1.5): pure rotations that SfM cannot register, so such videos are preprocessed with their
camera files (``poses.method: file``); with ``revisit`` they come back the same way -- the clips a
model learns its memory from (docs/method.md §13). For each video ``<name>`` it writes

* ``<name>.gt.npz``: ``c2w`` (N, 4, 4) float64 OpenCV camera-to-world, ``K`` (N, 3, 3) float64
  pixels, ``depth`` (N, H, W) float16 z-depth (0 = sky), ``dynamic`` / ``sky`` (N, H, W) bool,
  ``fps``, ``image_size``, ``moving``, ``open_ceiling``, ``scene_seed``, ``revisit``, ``camera_paths``;
* ``<name>.cameras.txt``: the same cameras as a RealEstate10K file;
* ``<name>.mp4``: H.264 video (written last, so an mp4 implies its ground truth exists).

Existing complete outputs are kept (re-running resumes), unless ``overwrite``.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from mirage_model.geometry.camera import intrinsics_from_fov, look_at
from mirage_model.geometry.formats import write_re10k
from mirage_model.geometry.trajectory import Trajectory, random_outbound_path, there_and_back
from mirage_model.io.atomic import atomic_path
from mirage_model.io.images import to_uint8
from mirage_model.io.sample_format import ClipSample, encode_sample
from mirage_model.io.video import write_video
from mirage_model.synthetic import default_scene, render, render_trajectory

from . import storage

logger = logging.getLogger(__name__)

CAMERA_PATHS = ("track", "fast")
"""``make_synthetic_dataset(camera_paths=...)``: the SfM-friendly sideways track, or fast pans / orbits / dollies."""

BAD_INPUT_REASONS: dict[str, str | None] = {
    "empty": "empty",
    "truncated": "truncated",
    "not_a_video": "not_a_video",
    "audio_only": "no_video_stream",
    "too_short": "too_short",
    "static_camera": "static",  # decodes fine; the pose stage must reject it (no camera motion)
}
"""The manifest reason each input from ``make_bad_inputs`` should get (a ``VideoError`` reason for
those that do not decode)."""
DECODABLE_BAD_INPUTS = ("static_camera",)
"""Inputs of ``make_bad_inputs`` that decode fine and are rejected by a later stage."""

__all__ = ["BAD_INPUT_REASONS", "CAMERA_PATHS", "DECODABLE_BAD_INPUTS", "make_bad_inputs", "make_synthetic_dataset", "make_synthetic_testset",
           "synthetic_camera_path"]


def synthetic_camera_path(rng: np.random.Generator, n_frames: int, image_size: tuple[int, int],
                          face_ball: bool, revisit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(c2w (N, 4, 4), K (3, 3)) for a sideways track with a slight pan inside the default room.

    ``revisit``: the camera goes along the track and comes back the same way (frame i and N - 1 - i
    share a pose), so the second half revisits the views of the first -- the clips that teach and
    test a spatial memory (``SampleConfig.memory_from="history"``).

    World y is down (floor at y = +1.5). ``face_ball`` turns the camera towards the rolling
    ball's lane (+z) and lowers it so the ball is in view; its track then also descends, because a
    ball rolling parallel to a purely sideways camera track moves exactly like a static ball at
    another depth (along the epipolar lines) and no flow + depth method can tell them apart.
    """
    if face_ball:
        heading = math.radians(rng.uniform(-20.0, 20.0))
        height, pitch = rng.uniform(0.2, 0.4), math.radians(rng.uniform(6.0, 12.0))
    else:
        heading = rng.uniform(0.0, 2.0 * math.pi)
        height, pitch = rng.uniform(-0.2, 0.4), math.radians(rng.uniform(-4.0, 6.0))
    radius, angle = 0.6 * math.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * math.pi)
    start = np.array([radius * math.cos(angle), height, radius * math.sin(angle)])
    baseline = rng.uniform(0.8, 1.2) * rng.choice([-1.0, 1.0])
    pan = math.radians(rng.uniform(2.0, 6.0)) * rng.choice([-1.0, 1.0])
    right = np.array([math.cos(heading), 0.0, -math.sin(heading)])
    if face_ball:  # tilt the track: sideways and down (+y)
        right = right + np.array([0.0, rng.uniform(0.6, 0.9) * np.sign(baseline), 0.0])
        right /= np.linalg.norm(right)
    fractions = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)
    if revisit:
        fractions = 1.0 - np.abs(1.0 - 2.0 * fractions)  # 0 -> 1 -> 0
    poses = []
    for f in fractions:
        eye = start + (f - 0.5) * baseline * right
        yaw = heading + (f - 0.5) * 2.0 * pan
        direction = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                              math.cos(yaw) * math.cos(pitch)])
        poses.append(look_at(torch.from_numpy(eye), torch.from_numpy(eye + direction)))
    K = intrinsics_from_fov(rng.uniform(55.0, 70.0), image_size)
    return torch.stack(poses), K


def _fast_camera_path(rng: np.random.Generator, n_frames: int, image_size: tuple[int, int],
                      revisit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(c2w (N, 4, 4), K (3, 3)) of a fast one-way path, or with ``revisit`` its first
    ``ceil(N / 2)`` cameras and the same ones back (``there_and_back``)."""
    out_frames = n_frames // 2 + 1 if revisit else n_frames
    traj, _ = random_outbound_path(rng, out_frames, image_size)
    if revisit:
        traj = there_and_back(traj)
    return traj.c2w[:n_frames], traj.K[0]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.atomic_write_bytes(str(path), buf.getvalue())


def make_synthetic_dataset(out_dir: str | os.PathLike, n_videos: int, *, seed: int = 0,
                           frames: int = 97, size: tuple[int, int] = (240, 320), fps: float = 16,
                           moving_fraction: float = 0.5, overwrite: bool = False,
                           texture_scale: float = 1.0, revisit: bool = False,
                           camera_paths: str = "track") -> list[Path]:
    """Render ``n_videos`` synthetic videos into ``out_dir``; returns the ``.mp4`` paths (sorted).

    See the module docstring for the files and camera paths (``camera_paths``: ``"track"`` or ``"fast"``;
    ``revisit``: out and back the same way, see ``synthetic_camera_path``). Deterministic in ``seed``.
    """
    if camera_paths not in CAMERA_PATHS:
        raise ValueError(f"camera_paths must be one of {CAMERA_PATHS}, got {camera_paths!r}")
    if n_videos < 0 or frames < 1:
        raise ValueError(f"need n_videos >= 0 and frames >= 1, got {n_videos}, {frames}")
    h, w = (int(v) for v in size)
    if h % 2 or w % 2:
        raise ValueError(f"size must be even for H.264 yuv420p, got {size}")
    if not 0.0 <= moving_fraction <= 1.0:
        raise ValueError(f"moving_fraction must be in [0, 1], got {moving_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([int(seed), 7919]).permutation(n_videos)
    n_moving = int(round(n_videos * moving_fraction))
    moving_set = set(order[:n_moving].tolist())
    paths = []
    for i in range(n_videos):
        name = f"synth_{i:04d}"
        mp4, gt, cams = out / f"{name}.mp4", out / f"{name}.gt.npz", out / f"{name}.cameras.txt"
        paths.append(mp4)
        if not overwrite and mp4.exists() and gt.exists() and cams.exists():
            continue
        rng = np.random.default_rng([int(seed), i])
        moving = i in moving_set
        open_ceiling = bool(rng.uniform() < 0.25)
        scene_seed = int(rng.integers(0, 2**31 - 1))
        scene = default_scene(scene_seed, moving_object=moving, open_ceiling=open_ceiling,
                              texture_scale=texture_scale)
        if camera_paths == "fast":
            c2w, K = _fast_camera_path(rng, frames, (h, w), revisit)
        else:
            c2w, K = synthetic_camera_path(rng, frames, (h, w), face_ball=moving, revisit=revisit)
        logger.info("rendering %s (%d frames %dx%d, moving=%s)", name, frames, h, w, moving)
        r = render_trajectory(scene, K, c2w, (h, w), fps=float(fps))
        Ks = K.expand(frames, 3, 3).numpy().copy()
        _save_npz(gt, c2w=c2w.numpy(), K=Ks, depth=r.depth.numpy().astype(np.float16),
                  dynamic=r.dynamic_mask.numpy(), sky=r.sky_mask.numpy(), fps=np.float64(fps),
                  image_size=np.array([h, w]), moving=np.bool_(moving),
                  open_ceiling=np.bool_(open_ceiling), scene_seed=np.int64(scene_seed), revisit=np.bool_(revisit),
                  camera_paths=np.str_(camera_paths))
        traj = Trajectory(c2w, K, (h, w), torch.arange(frames, dtype=torch.float64) / float(fps))
        with atomic_path(cams) as tmp:
            write_re10k(tmp, traj, url=f"synthetic://{name}", fps=float(fps))
        write_video(mp4, to_uint8(r.rgb).numpy(), fps)
    return sorted(paths)


def make_synthetic_testset(out_dir: str, n_clips: int, *, seed: int = 5000, frames: int = 65,
                           size: tuple[int, int] = (128, 224), fps: float = 30.0, texture_scale: float = 1.0,
                           options: storage.StorageOptions | None = None) -> list[str]:
    """Render ``n_clips`` RealEstate10K-format test clips (``pipeline.testsets`` layout) into
    ``out_dir`` (a directory or ``s3://`` prefix): static scenes from scene seeds ``seed``,
    ``seed + 1``, ... (training data draws its seeds elsewhere) along the sideways tracks of
    ``synthetic_camera_path``. Returns the clip ids. Deterministic in ``seed``."""
    from .testsets import write_clip

    if n_clips < 1 or frames < 1:
        raise ValueError(f"need n_clips >= 1 and frames >= 1, got {n_clips}, {frames}")
    h, w = (int(v) for v in size)
    ids = []
    for i in range(n_clips):
        rng = np.random.default_rng([int(seed), i, 271])
        c2w, K = synthetic_camera_path(rng, frames, (h, w), face_ball=False)
        scene = default_scene(int(seed) + i, texture_scale=texture_scale)
        logger.info("rendering test clip %d (%d frames %dx%d)", i, frames, h, w)
        r = render_trajectory(scene, K, c2w, (h, w), fps=float(fps))
        traj = Trajectory(c2w, K.expand(frames, 3, 3), (h, w), torch.arange(frames, dtype=torch.float64) / float(fps))
        clip = f"clip_{int(seed) + i:06d}"
        write_clip(out_dir, clip, to_uint8(r.rgb).numpy(), traj, fps=fps, url=f"synthetic://{clip}", options=options)
        ids.append(clip)
    return ids


def make_bad_inputs(out_dir: str | os.PathLike, *, size: tuple[int, int] = (64, 96),
                    fps: float = 16, frames: int = 33, seed: int = 0) -> dict[str, Path]:
    """Write inputs that must be rejected (or caught later); keys as in ``BAD_INPUT_REASONS``.

    ``empty.mp4`` (0 bytes), ``truncated.mp4`` (the first 30% of a valid video's bytes),
    ``not_a_video.mp4`` (text), ``audio_only.mp4`` (AAC in MP4, no video stream),
    ``too_short.mp4`` (9 frames), ``static_camera.mp4`` (``frames`` identical rendered frames).
    """
    import av

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size
    rng = np.random.default_rng(seed)
    paths: dict[str, Path] = {}

    paths["empty"] = out / "empty.mp4"
    paths["empty"].write_bytes(b"")

    noise = rng.integers(0, 256, size=(frames, h, w, 3), dtype=np.uint8)
    full = out / "truncated_full.tmp.mp4"
    write_video(full, noise, fps)
    data = full.read_bytes()
    full.unlink()
    paths["truncated"] = out / "truncated.mp4"
    paths["truncated"].write_bytes(data[: int(len(data) * 0.3)])

    paths["not_a_video"] = out / "not_a_video.mp4"
    paths["not_a_video"].write_text("this is a text file renamed to .mp4\n" * 20)

    paths["audio_only"] = out / "audio_only.mp4"
    with av.open(str(paths["audio_only"]), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        t = np.arange(16000, dtype=np.float32) / 16000.0
        tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        for k in range(0, tone.size - 1024 + 1, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = k
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    paths["too_short"] = out / "too_short.mp4"
    write_video(paths["too_short"], noise[:9], fps)

    scene = default_scene(seed)
    K = intrinsics_from_fov(60.0, (h, w))
    c2w = look_at(torch.tensor([0.0, 0.2, 0.0]), torch.tensor([0.3, 0.3, 1.0]))
    still = to_uint8(render(scene, K, c2w, (h, w)).rgb).numpy()
    paths["static_camera"] = out / "static_camera.mp4"
    write_video(paths["static_camera"], np.repeat(still[None], frames, axis=0), fps)
    return paths


def make_ground_truth_shards(out_uri: str, n_clips: int, *, seed: int = 0, frames: int = 33,
                             size: tuple[int, int] = (64, 96), fps: float = 16, per_shard: int = 2,
                             vae: str | None = "tiny", options=None, revisit: bool = False) -> list[str]:
    """Training shards in the pipeline's format straight from the renderer's ground truth.

    Same members and crash-safe publishing as ``mirage preprocess`` (``sample_format.encode_sample`` +
    ``publish_group`` + ``finalize_manifest``), but the poses, depth and static masks are exact
    instead of estimated: for tests and benchmarks of the trainer that must not depend on SfM.
    ``vae``: ``"tiny"`` / ``"full"`` / a directory to store latents, or None. ``revisit``: camera
    paths that come back over their own views (``synthetic_camera_path``). Returns the shard URIs.
    """
    from . import shards

    h, w = (int(v) for v in size)
    aux = (h // 4, w // 4)
    vae_model = None
    if vae is not None:
        from mirage_model.vae import encode_video, load_vae

        vae_model = load_vae(vae, seed=seed)
    encoded = []
    for i in range(n_clips):
        rng = np.random.default_rng([int(seed), i, 31])
        moving = bool(i % 2 == 0)
        scene = default_scene(int(rng.integers(0, 2**31 - 1)), moving_object=moving)
        c2w, K = synthetic_camera_path(rng, frames, (h, w), face_ball=moving, revisit=revisit)
        r = render_trajectory(scene, K, c2w, (h, w), fps=float(fps))
        rgb = to_uint8(r.rgb).numpy()
        idx = list(range(0, frames, 4))
        static = ~(r.dynamic_mask | r.sky_mask)
        latents = None
        if vae_model is not None:
            video = torch.from_numpy(rgb).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
            with torch.no_grad():
                latents = encode_video(vae_model, video)[0].half().numpy()
        key = shards.sample_key(f"gt_{seed}_{i:04d}", 0)
        clip = ClipSample(
            frames=rgb, c2w=c2w.numpy(), K=K.expand(frames, 3, 3).numpy(), depth=r.depth[idx].numpy(),
            static=static[idx].numpy(), fps=float(fps), source_uri=f"synthetic://gt/{seed}/{i}",
            frame_indices=list(range(frames)), depth_frames=idx, latents=latents,
            extra_meta={"caption": "a camera moves through a quiet room" if i % 3 else ""})
        encoded.append(encode_sample(key, clip, aux_size=aux))
    uris = []
    for g in range(0, n_clips, per_shard):
        group = encoded[g:g + per_shard]
        records = [shards.InputRecord(input_id=s["__key__"], uri=f"synthetic://gt/{seed}/{g + j}", status="ok",
                                      sample_keys=[s["__key__"]]) for j, s in enumerate(group)]
        gid = shards.group_id_for(r.input_id for r in records)
        result = shards.publish_group(out_uri, gid, group, records, options)
        uris.append(result.shard_uri)
    shards.finalize_manifest(out_uri, options)
    return uris
