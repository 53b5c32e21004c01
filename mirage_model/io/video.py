"""Video probing, frame-accurate decoding and H.264 writing with PyAV (never torchvision).

Local files and file objects only: ``probe`` / ``decode`` take a local path or a seekable binary
file object, ``decode_bytes`` an in-memory video, and ``write_video`` writes a local path. Remote
storage (``s3://``) is the pipeline's business: it opens objects with fsspec and passes the file
object here (``pipeline.stages.decode_uri``), or writes locally and publishes the file
(``pipeline.storage.atomic_write_file``).

Decoding (``decode`` / ``decode_bytes``):

* Frames come out as RGB ``uint8`` arrays in presentation order with their timestamps in seconds,
  relative to the first decoded frame (so frame 0 is at t = 0 whatever the container's start
  time or edit list).
* Rotation: phones store portrait video as landscape frames plus a display matrix. We read it
  from the decoded frame (``VideoFrame.rotation``: the counter-clockwise angle of the display
  matrix, PyAV >= 14) or, failing that, the legacy ``rotate`` stream tag (clockwise degrees), round
  it to a multiple of 90 and apply it with ``np.rot90`` (counter-clockwise), exactly like ffmpeg's
  autorotate. ``VideoInfo.width/height`` are the displayed (rotated) sizes.
* Squeezed pixels: anamorphic and broadcast video (DV, HDV, 1440x1080 cameras) store non-square
  pixels and a sample aspect ratio (SAR). Frames are resampled to square pixels (the width times
  the SAR, area interpolation, even), as a player shows them, so that every later stage (SfM,
  depth, the latent grid) sees one focal length; ``VideoInfo.sample_aspect_ratio`` records the
  stored SAR and ``width`` the displayed one.
* Frame rate: with ``fps=None`` every decoded frame is returned. With a target ``fps`` the video is
  resampled **by timestamp**, which handles variable-frame-rate input: output frame ``k`` is at
  ``t_k = k / fps`` and shows the latest source frame whose timestamp is ``<= t_k`` (a 1 ms /
  1 %-of-a-frame tolerance absorbs time-base rounding), i.e. what a player would show at ``t_k``.
  Output frames cover ``[0, end)`` where ``end`` is the last timestamp plus one (median) frame
  interval, so resampling a constant-rate video to its own rate is the identity.
  ``DecodedVideo.source_indices`` records which decoded frame each output frame is.

Errors raise ``VideoError`` (a ``ValueError``) carrying a reason code (``VideoError.reason``):

``not_found``        the path (or object) does not exist
``empty``            zero bytes
``not_a_video``      PyAV cannot open it and it does not look like a media container
``corrupt``          a recognised container that cannot be opened, or no frame decodes at all
``truncated``        decoding fails after some frames (before ``max_frames`` were produced), fewer
                     frames decode than the header promises, or an MP4 whose index cannot be
                     read (``ftyp`` present, ``moov`` missing: an interrupted write or upload)
``no_video_stream``  the file has no video stream (audio only)
``too_short``        fewer frames than a clip needs (raised by ``pipeline.clips.plan_clips``)
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import IO, Any
from urllib.parse import urlparse

import av
import numpy as np
from av.error import FFmpegError

from .atomic import atomic_path

logger = logging.getLogger(__name__)

REASONS: tuple[str, ...] = ("not_found", "empty", "not_a_video", "corrupt", "truncated",
                            "no_video_stream", "too_short", "io_error")
"""Every reason code a ``VideoError`` can carry."""

VideoSource = str | os.PathLike | IO[bytes]
"""What ``probe`` / ``decode`` read: a local path (or ``file://`` URI), or a seekable binary file
object positioned anywhere (it is read from its start; the caller keeps ownership and closes it)."""

__all__ = [
    "REASONS",
    "DecodedVideo",
    "VideoError",
    "VideoInfo",
    "VideoSource",
    "apply_rotation",
    "decode",
    "decode_bytes",
    "normalize_rotation",
    "probe",
    "resample_by_timestamp",
    "write_video",
]


class VideoError(ValueError):
    """A video that cannot be used, with a machine-readable ``reason`` (one of ``REASONS``)."""

    def __init__(self, reason: str, message: str = "", uri: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}; expected one of {REASONS}")
        self.reason = reason
        self.message = message
        self.uri = uri
        where = f"{uri}: " if uri else ""
        super().__init__(f"{where}[{reason}] {message}".rstrip())

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray workers
        return (VideoError, (self.reason, self.message, self.uri))


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns about a video.

    ``width``/``height`` are the displayed size (after ``rotation``); ``rotation`` is the
    counter-clockwise display rotation in {0, 90, 180, 270}; ``fps`` is the average frame rate;
    ``n_frames`` comes from the header, or from counting packets when the header has none.
    ``sample_aspect_ratio`` is the stored pixels' width / height (1.0: square); the frames are
    resampled to square pixels and ``width`` is already the displayed width.
    """

    uri: str
    n_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int
    codec: str
    sample_aspect_ratio: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass
class DecodedVideo:
    """Decoded frames (N, H, W, 3) uint8 RGB, timestamps (N,) float64 seconds, and provenance.

    ``source_indices`` (N,) int64: index of the decoded source frame shown by each output frame
    (differs from ``arange(N)`` only when resampling to a target fps). ``fps``: the rate of the
    output frames (the target rate, or the source's average rate when every frame was kept).
    """

    frames: np.ndarray
    timestamps: np.ndarray
    info: VideoInfo
    source_indices: np.ndarray
    fps: float = 0.0

    def __len__(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------------
# Rotation
# ----------------------------------------------------------------------------------------------
def normalize_rotation(degrees: float) -> int:
    """Round a counter-clockwise angle to the nearest multiple of 90, in {0, 90, 180, 270}."""
    if not math.isfinite(degrees):
        return 0
    snapped = int(round(degrees / 90.0)) * 90
    if abs(snapped - degrees) > 1.0:
        logger.warning("display rotation %.1f deg is not a multiple of 90; using %d", degrees, snapped)
    return snapped % 360


def apply_rotation(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an (H, W, ...) image counter-clockwise by ``rotation`` (a multiple of 90) degrees."""
    rot = normalize_rotation(rotation)
    if rot == 0:
        return frame
    return np.ascontiguousarray(np.rot90(frame, k=rot // 90, axes=(0, 1)))


def _sample_aspect(stream: av.video.stream.VideoStream) -> float:
    """The stored pixels' width / height (1.0 when square or unknown)."""
    for owner in (stream, stream.codec_context):
        try:
            sar = owner.sample_aspect_ratio
        except (AttributeError, FFmpegError):
            continue
        if sar and float(sar) > 0:
            return float(sar)
    return 1.0


def _square_width(width: int, sar: float) -> int:
    """Displayed width of ``width`` stored pixels of aspect ``sar`` (even, as the encoders need)."""
    return width if abs(sar - 1.0) < 1e-3 else max(2, int(round(width * sar / 2.0)) * 2)


def _frame_rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """CCW display rotation of a decoded frame (display matrix, else the legacy ``rotate`` tag)."""
    try:
        rot = frame.rotation
    except (AttributeError, FFmpegError):
        rot = 0
    if rot:
        return normalize_rotation(float(rot))
    tag = stream.metadata.get("rotate") if stream.metadata else None
    if tag:
        try:
            return normalize_rotation(-float(tag))  # the tag is clockwise
        except ValueError:
            logger.warning("ignoring unparsable rotate tag %r", tag)
    return 0


# ----------------------------------------------------------------------------------------------
# Opening and error classification
# ----------------------------------------------------------------------------------------------
_CONTAINER_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"OggS"),
)


def _classify_open_failure(head: bytes) -> tuple[str, str]:
    """(reason, message) for a file PyAV cannot open, from its first bytes."""
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "truncated", "MP4 header present but the index (moov) cannot be read"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"free", b"wide"):
        return "corrupt", "MP4/QuickTime boxes present but the file cannot be demuxed"
    for offset, sig in _CONTAINER_SIGNATURES:
        if head[offset:offset + len(sig)] == sig:
            return "corrupt", "recognised container signature but the file cannot be demuxed"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "corrupt", "MPEG-TS signature but the file cannot be demuxed"
    return "not_a_video", "not a recognised media container"


def _local_path(path: str | os.PathLike) -> str:
    """Absolute local path for a path or ``file://`` URI; ValueError for any other scheme."""
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if text.startswith("file://"):
        text = urlparse(text).path
    elif "://" in text:
        raise ValueError(f"{text}: not a local path (this module reads and writes local files and "
                         "file objects; remote videos go through pipeline.storage)")
    return os.path.abspath(os.path.expanduser(text))


class _Source:
    """An input ready for ``av.open`` (a local path or a seekable file), its size and first bytes."""

    def __init__(self, src: VideoSource, name: str | None) -> None:
        if isinstance(src, (str, os.PathLike)):
            self.uri = str(src) if name is None else name
            path = _local_path(src)
            try:
                self.nbytes = os.path.getsize(path)
            except FileNotFoundError:
                raise VideoError("not_found", "no such file", self.uri) from None
            if self.nbytes:
                with open(path, "rb") as f:
                    self.head = f.read(512)
            self.target: Any = path
        else:
            label = getattr(src, "path", None) or getattr(src, "name", None) or "<file>"
            self.uri = str(label) if name is None else name
            self.nbytes = int(src.seek(0, io.SEEK_END))
            src.seek(0)
            self.head = src.read(512) if self.nbytes else b""
            src.seek(0)
            self.target = src
        if self.nbytes == 0:
            raise VideoError("empty", "zero bytes", self.uri)


def _open_container(target: Any, head: bytes, uri: str) -> av.container.InputContainer:
    try:
        return av.open(target, mode="r")
    except FFmpegError as exc:
        reason, message = _classify_open_failure(head)
        raise VideoError(reason, f"{message} ({exc})", uri) from exc


def _video_stream(container: av.container.InputContainer, uri: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoError("no_video_stream", f"no video stream (streams: {', '.join(kinds)})", uri)
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            value = float(rate)
            if value > 0 and math.isfinite(value):
                return value
    return 0.0


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                     n_frames: int, fps: float) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return n_frames / fps if fps > 0 else 0.0


def _check_index(stream: av.video.stream.VideoStream, nbytes: int, uri: str) -> None:
    """Raise ``truncated`` when the container's sample index points past the end of the file."""
    try:
        entries = stream.index_entries
        end = max((e.pos + e.size for e in entries if e.pos >= 0), default=0)
    except (AttributeError, FFmpegError):  # older PyAV or no index: nothing to check
        return
    if end > nbytes:
        raise VideoError("truncated", f"the index references byte {end} but the file has {nbytes}",
                         uri)


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    n = 0
    for packet in container.demux(stream):
        if packet.size:
            n += 1
    return n


def _info(uri: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
          first: av.VideoFrame, n_frames: int) -> VideoInfo:
    rotation = _frame_rotation(first, stream)
    sar = _sample_aspect(stream)
    w, h = _square_width(first.width, sar), first.height
    if rotation in (90, 270):
        w, h = h, w
    fps = _stream_fps(stream)
    return VideoInfo(uri=uri, n_frames=int(n_frames), fps=fps,
                     duration=_stream_duration(container, stream, n_frames, fps),
                     width=int(w), height=int(h), rotation=rotation, codec=stream.codec_context.name,
                     sample_aspect_ratio=sar)


# ----------------------------------------------------------------------------------------------
# Probe
# ----------------------------------------------------------------------------------------------
def probe(src: VideoSource, *, name: str | None = None) -> VideoInfo:
    """Frame count, average fps, duration, displayed size and rotation of a video.

    ``src`` is a local path or a seekable binary file object (``VideoSource``); ``name`` is the
    URI reported in ``VideoInfo.uri`` and errors (default: the path, or the file's name).
    Decodes only the first frame (the display rotation lives in its side data). Raises
    ``VideoError`` like ``decode``; a file whose sample index (MP4) points past its end is
    ``truncated`` without decoding it.
    """
    source = _Source(src, name)
    uri = source.uri
    container = _open_container(source.target, source.head, uri)
    with container:
        stream = _video_stream(container, uri)
        _check_index(stream, source.nbytes, uri)
        first = _first_frame(container, stream, uri)
        n_frames = int(stream.frames or 0)
        if n_frames <= 0:
            container.seek(0)
            n_frames = _count_packets(container, stream)
        return _info(uri, container, stream, first, n_frames)


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 uri: str) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except FFmpegError as exc:
        raise VideoError("corrupt", f"no frame could be decoded ({exc})", uri) from exc
    raise VideoError("corrupt", "the video stream holds no decodable frame", uri)


# ----------------------------------------------------------------------------------------------
# Decode
# ----------------------------------------------------------------------------------------------
def resample_by_timestamp(timestamps: Sequence[float], fps: float, end_time: float | None = None,
                          max_frames: int | None = None) -> np.ndarray:
    """Source index shown at each target time ``k / fps``: the latest with timestamp <= t_k.

    ``timestamps`` must be non-decreasing and start at 0 (or later: targets before the first
    frame show frame 0). Targets run over ``[0, end_time)``; ``end_time`` defaults to the last
    timestamp plus the median frame interval. The rule of ``decode``'s streaming loop as a pure
    function (for tests, and to resample other per-frame data the same way).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError("timestamps: expected a non-empty 1-D sequence")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if end_time is None:
        end_time = float(ts[-1] + _median_interval(ts, fps))
    tol = _tolerance(fps)
    n = max(1, int(math.ceil((end_time - tol) * fps)))
    if max_frames is not None:
        n = min(n, int(max_frames))
    targets = np.arange(n, dtype=np.float64) / fps
    idx = np.searchsorted(ts, targets + tol, side="right") - 1
    return np.clip(idx, 0, ts.size - 1).astype(np.int64)


def _tolerance(fps: float) -> float:
    return min(1e-3, 0.01 / fps)


def _median_interval(ts: np.ndarray, fps_hint: float) -> float:
    if ts.size >= 2:
        d = np.diff(ts)
        d = d[d > 0]
        if d.size:
            return float(np.median(d))
    return 1.0 / fps_hint if fps_hint > 0 else 0.0


def _decoded_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    uri: str, state: dict[str, Any]) -> Iterator[tuple[av.VideoFrame, float, int]]:
    """Yield (frame, time relative to the first frame, index); errors go to ``state['error']``."""
    fps = _stream_fps(stream)
    t0: float | None = None
    index = 0
    try:
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time is not None:
                t = float(frame.time)
            else:
                t = index / fps if fps > 0 else float(index)
            if t0 is None:
                t0 = t
            yield frame, t - t0, index
            index += 1
    except FFmpegError as exc:
        state["error"] = exc
    state["count"] = index


UPSAMPLE_TOLERANCE = 1.05
"""``upsample=False`` keeps the source's own frames unless it is more than 5 % faster than ``fps``
(resampling a 16.3 fps video to 16 fps would repeat a frame every few seconds)."""


def _decode_container(target: Any, head: bytes, uri: str, fps: float | None,
                      max_frames: int | None, upsample: bool = True) -> DecodedVideo:
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    container = _open_container(target, head, uri)
    with container:
        stream = _video_stream(container, uri)
        stream.thread_type = "AUTO"
        source_fps = _stream_fps(stream)
        if fps is not None and not upsample and 0 < source_fps <= fps * UPSAMPLE_TOLERANCE:
            fps = None  # slower than the target: every source frame, none repeated
        header_frames = int(stream.frames or 0)
        frames: list[np.ndarray] = []
        stamps: list[float] = []
        indices: list[int] = []
        state: dict[str, Any] = {}
        rotation: int | None = None
        first: av.VideoFrame | None = None
        cache: dict[int, np.ndarray] = {}
        sar = _sample_aspect(stream)

        def to_array(frame: av.VideoFrame, index: int) -> np.ndarray:
            if index not in cache:
                cache.clear()
                width = _square_width(frame.width, sar)
                rgb = (frame.to_ndarray(format="rgb24") if width == frame.width else
                       frame.to_ndarray(width=width, height=frame.height, format="rgb24", interpolation="AREA"))
                cache[index] = apply_rotation(rgb, rotation or 0)
            return cache[index]

        def full() -> bool:
            return max_frames is not None and len(frames) >= max_frames

        prev: tuple[av.VideoFrame, float, int] | None = None
        src_times: list[float] = []
        tol = _tolerance(fps) if fps else 0.0
        for frame, t, index in _decoded_frames(container, stream, uri, state):
            if first is None:
                first = frame
                rotation = _frame_rotation(frame, stream)
            src_times.append(t)
            if fps is None:
                frames.append(to_array(frame, index))
                stamps.append(t)
                indices.append(index)
            else:
                while prev is not None and not full() and len(frames) / fps < t - tol:
                    frames.append(to_array(prev[0], prev[2]))
                    stamps.append(len(stamps) / fps)
                    indices.append(prev[2])
                prev = (frame, t, index)
            if full():
                break
        else:
            if "error" not in state and fps is not None and prev is not None:
                end = prev[1] + _median_interval(np.asarray(src_times), _stream_fps(stream) or fps)
                while not full() and len(frames) / fps < end - tol:
                    frames.append(to_array(prev[0], prev[2]))
                    stamps.append(len(stamps) / fps)
                    indices.append(prev[2])

        n_decoded = len(src_times)
        if "error" in state and not full():
            exc = state["error"]
            if n_decoded == 0:
                raise VideoError("corrupt", f"no frame could be decoded ({exc})", uri) from exc
            raise VideoError("truncated", f"decoding failed after {n_decoded} frame(s) ({exc})",
                             uri) from exc
        if first is None:
            raise VideoError("corrupt", "the video stream holds no decodable frame", uri)
        if not full() and header_frames > 0 and n_decoded < 0.95 * header_frames - 1:
            raise VideoError("truncated", f"decoded {n_decoded} of {header_frames} frames "
                             "announced by the header", uri)
        info = _info(uri, container, stream, first, header_frames or n_decoded)
    return DecodedVideo(frames=np.stack(frames), timestamps=np.asarray(stamps, dtype=np.float64),
                        info=info, source_indices=np.asarray(indices, dtype=np.int64),
                        fps=float(fps) if fps is not None else info.fps)


def decode(src: VideoSource, *, fps: float | None = None, max_frames: int | None = None,
           name: str | None = None, upsample: bool = True) -> DecodedVideo:
    """Decode a video to RGB frames (see the module docstring for the rules).

    Args:
        src: local path (or ``file://`` URI) or a seekable binary file object, e.g. an fsspec
            file for an ``s3://`` object (``pipeline.stages.decode_uri`` opens one).
        fps: target frame rate for timestamp-based resampling; ``None`` keeps every frame.
        upsample: with False, a source slower than ``fps`` keeps its own frames (and rate, reported
            in ``DecodedVideo.fps``) instead of repeating frames to reach ``fps``.
        max_frames: stop after this many output frames (decoding stops early too).
        name: the URI reported in ``VideoInfo.uri`` and errors (default: the path, or the
            file's name).
    """
    source = _Source(src, name)
    return _decode_container(source.target, source.head, source.uri, fps, max_frames, upsample)


def decode_bytes(data: bytes, fps: float | None = None, max_frames: int | None = None,
                 name: str = "<bytes>") -> DecodedVideo:
    """``decode`` for an in-memory video (e.g. a shard's ``video.mp4`` member)."""
    if not data:
        raise VideoError("empty", "zero bytes", name)
    return _decode_container(io.BytesIO(data), bytes(data[:512]), name, fps, max_frames)


# ----------------------------------------------------------------------------------------------
# Write
# ----------------------------------------------------------------------------------------------
def _rate(fps: float) -> Fraction:
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _encode_mp4(path: str, frames: np.ndarray, fps: float, qp: int,
                timestamps: np.ndarray | None, rotation: int, preset: str, sample_aspect_ratio: float) -> None:
    n, h, w, _ = frames.shape
    rate = _rate(fps)
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # A constant quantiser, not CRF: x264's CRF (macroblock-tree rate control) gave different
        # bytes and decoded frames for the same input from one call to the next, so renders,
        # re-encoded clips and everything computed from them (SfM included) would not repeat.
        # CRF without the macroblock tree repeats but makes a still scene flicker (2 levels).
        stream.options = {"qp": str(int(qp)), "preset": preset}
        time_base = Fraction(1, 90000) if timestamps is not None else 1 / rate
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(normalize_rotation(rotation))
        if abs(sample_aspect_ratio - 1.0) > 1e-6:
            stream.codec_context.sample_aspect_ratio = Fraction(sample_aspect_ratio).limit_denominator(1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.time_base = time_base
            frame.pts = int(round(timestamps[i] * 90000)) if timestamps is not None else i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, qp: int = 18, *,
                timestamps: Sequence[float] | None = None, rotation: int = 0,
                preset: str = "medium", sample_aspect_ratio: float = 1.0) -> str:
    """Write RGB ``frames`` (N, H, W, 3) uint8 as an H.264 (yuv420p) MP4 at a local path, atomically.

    ``qp``: x264's constant quantiser (0 lossless, 18 visually lossless, 51 worst); the same frames
    always give the same file.
    H and W must be even (yuv420p). ``timestamps`` (seconds, strictly increasing) write a
    variable-frame-rate file; ``rotation`` stores a counter-clockwise display rotation (the
    pixels are not rotated; decoders rotate on display); ``sample_aspect_ratio`` marks the pixels as
    that much wider than tall (anamorphic; ``decode`` stretches them back). The file is encoded under a temporary
    sibling name and renamed into place (``atomic.atomic_path``; parent directories are
    created). For ``s3://`` destinations write locally and publish with
    ``pipeline.storage.atomic_write_file``. The moov index is placed at the front
    (faststart) so readers can stream it. Returns ``path`` as a string.
    """
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames: expected uint8 (N, H, W, 3) with N >= 1, got {arr.dtype} "
                         f"{arr.shape}")
    if arr.shape[1] % 2 or arr.shape[2] % 2:
        raise ValueError(f"frames: H and W must be even for yuv420p, got {arr.shape[1:3]}")
    ts = None
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.shape != (arr.shape[0],):
            raise ValueError(f"timestamps: expected shape ({arr.shape[0]},), got {ts.shape}")
        if np.any(np.diff(np.round(ts * 90000)) <= 0) or ts[0] < 0:
            raise ValueError("timestamps must be >= 0 and strictly increasing (at 1/90000 s)")
    with atomic_path(_local_path(path)) as tmp:
        _encode_mp4(str(tmp), arr, fps, qp, ts, rotation, preset, float(sample_aspect_ratio))
    return str(path)
