"""The settings of the perception functions: one typed, validated, frozen object per function.

Each function takes its per-call data (frames, cameras, the reference frame, neighbours, a depth
range, points, flows...) plus one ``params=`` object, built once by its caller -- from a config
where there is one (``pipeline.config.DepthConfig.stereo``, ``MaskConfig.flow``,
``GenerationConfig.writeback_stereo()``) -- as diffusers' schedulers take theirs. A default lives
in one place: the field below, or the named instance a caller uses.

* ``StereoParams``: the per-pixel plane sweep (``depth.plane_sweep_depth``,
  ``depth.estimate_depth_video``).
* ``CellStereoParams``: the sweep with one depth per cell (``depth.cell_sweep_depth``).
* ``MotionMaskParams``: the moving-object test (``masks.moving_object_mask`` and the functions that
  call it: ``masks.static_masks``, ``masks.clip_masks``).

A bad value is a ``pydantic.ValidationError`` (a ``ValueError``) naming the field; ``replace``
makes a validated copy with some fields changed.

Named settings (the plane count is the one value on which the data pipeline and generation differ):

* ``PREPROCESS_STEREO`` (48 planes): the preprocessing pipeline's sweep, on frames already reduced
  to ``depth.scale`` (half the clip size by default) -- about half the pixels of disparity to
  resolve -- and run on every clip of a dataset, where the sweep's cost (linear in the planes)
  is paid per clip. Also what ``mirage eval-perception`` measures.
* ``GENERATION_STEREO`` (64 planes, the class defaults): per-pixel sweeps at generation time, at
  the frames' own size (the RGB cache's write-back, ``GenerationConfig.writeback_stereo()``; the
  first frame's depth of ``mirage eval``).
* ``WRITEBACK_CELL_STEREO``: the latent memory's write-back (``CellStereoParams`` with no parallax
  check of its own: ``generation.writeback`` checks parallax before the sweep, in frame pixels).

Both plane counts are upper bounds: a sweep uses fewer planes when its depth range spans fewer
pixels of disparity (``depth.MIN_PLANES``, ``depth.PLANE_SPACING_PX``), which is the usual case
with a range from SfM points.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, field_validator

from mirage_model.config import StrictConfig

__all__ = [
    "GENERATION_STEREO",
    "PREPROCESS_STEREO",
    "WRITEBACK_CELL_STEREO",
    "CellStereoParams",
    "MotionMaskParams",
    "PerceptionParams",
    "StereoParams",
]


class PerceptionParams(StrictConfig):
    """Base of the perception settings: strict (unknown keys are errors), validated and frozen."""

    model_config = ConfigDict(frozen=True)

    def replace(self, **changes) -> Self:
        """A copy with ``changes`` applied, validated like a new object (a bad value raises)."""
        return type(self).model_validate({**self.model_dump(), **changes})


# Fields both sweeps have: described once here, each sweep gives its own default.
NumDepths = Annotated[int, Field(ge=3, description="most fronto-parallel planes, uniform in inverse depth; "
                                 "fewer (down to depth.MIN_PLANES) when the range spans fewer pixels of "
                                 "disparity, so that planes stay depth.PLANE_SPACING_PX apart")]
MinTexture = Annotated[float, Field(ge=0, description="grey standard deviation (in [0, 1] units) the reference "
                                    "patch (cell) needs; flatter is invalid (sky, blank walls)")]
MinConfidence = Annotated[float, Field(ge=0, le=1, description="a pixel (cell) whose confidence (match quality "
                                       "x distinctiveness) is below this is invalid")]
RatioMargin = Annotated[float, Field(gt=0, description="cost gap between the best plane and the best one more "
                                     "than two planes away that gives full distinctiveness (the cost-ratio test)")]
UnseenCost = Annotated[float, Field(ge=0, le=2, description="cost (1 - ZNCC) of a view that does not see the "
                                    "pixel on a plane (1 = ZNCC 0, uninformative)")]
Chunk = Annotated[int, Field(ge=1, description="planes per grid_sample call: bounds memory (about neighbours x "
                             "chunk x H x W x 48 bytes for the pixel sweep)")]


def _odd(name: str, v: int) -> int:
    if v % 2 == 0:
        raise ValueError(f"{name} must be odd (a window centred on the pixel), got {v}")
    return v


class StereoParams(PerceptionParams):
    """Settings of the per-pixel plane sweep (``plane_sweep_depth``, ``estimate_depth_video``; the
    method is in ``depth``'s module docstring).

    The defaults are ``GENERATION_STEREO``'s; the preprocessing pipeline uses ``PREPROCESS_STEREO``.
    """

    num_depths: NumDepths = 64
    patch: int = Field(5, ge=1, description="ZNCC window side, pixels (odd)")
    cost_window: int = Field(1, ge=1, description="box filter side over the aggregated cost volume (odd; 1 = none)")
    scale: float = Field(1.0, gt=0, le=1, description="the sweep runs at this fraction of the frames' size and "
                         "its result is upsampled back")
    min_views: int = Field(1, ge=1, description="neighbours that must see a pixel (inside the image, in front) "
                           "on the winning plane")
    min_texture: MinTexture = 0.01
    min_confidence: MinConfidence = 0.25
    ratio_margin: RatioMargin = 0.15
    min_agree: int = Field(2, ge=1, description="multi-view agreement: of the neighbours that saw the pixel on "
                           "every plane, at least this many (or all of them, if fewer) must have their own best "
                           "plane within agree_planes of the winner")
    agree_planes: int = Field(2, ge=0, description="planes a neighbour's own best plane may be from the winner "
                              "and still agree")
    unseen_cost: UnseenCost = 1.0
    chunk: Chunk = 16

    @field_validator("patch")
    @classmethod
    def _odd_patch(cls, v: int) -> int:
        return _odd("patch", v)

    @field_validator("cost_window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        return _odd("cost_window", v)


class CellStereoParams(PerceptionParams):
    """Settings of the sweep with one depth per cell (``cell_sweep_depth``): the ZNCC window is the
    cell, resized to ``work_cell`` pixels a side."""

    num_depths: NumDepths = 48
    work_cell: int = Field(8, ge=2, description="pixels per cell side at the working resolution")
    min_overlap: float = Field(0.6, ge=0, le=1, description="fraction of the cell a neighbour must see on a plane "
                               "for its cost to count")
    min_texture: MinTexture = 0.01
    min_confidence: MinConfidence = 0.2
    ratio_margin: RatioMargin = 0.15
    min_parallax_px: float = Field(1.0, ge=0, description="the sweep must move a cell by at least this many working "
                                   "pixels across the range in the widest-baseline neighbour; less (e.g. a pure "
                                   "rotation) raises ValueError: depth is not observable there")
    unseen_cost: UnseenCost = 1.0
    chunk: Chunk = 16


class MotionMaskParams(PerceptionParams):
    """Settings of the moving-object test (``moving_object_mask``): measured optical flow against the
    camera's rigid flow, then a morphological clean-up (``clean_mask``)."""

    threshold_px: float = Field(1.0, gt=0, description="a pixel moves in a comparison when |flow - rigid| > "
                                "threshold_px + relative x |rigid| (pixels; also the epipolar test's threshold)")
    relative: float = Field(0.15, ge=0, description="the part of the threshold proportional to the rigid flow")
    flow_method: Literal["dis", "farneback"] = Field("dis", description="OpenCV optical flow: DIS (medium preset) "
                                                     "or Farneback")
    morphology: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = Field(
        (3, 7), description="(open, close) elliptical kernel sides of the clean-up, or null for none")
    min_area: float = Field(0.002, ge=0, description="smallest moving component kept: pixels, or a fraction of "
                            "the image when < 1 (with morphology)")
    undecided: Literal["epipolar", "static"] = Field(
        "epipolar", description="pixels without valid depth: epipolar (a depth-free test, textured pixels only) "
        "or static")
    min_texture: float = Field(0.02, ge=0, description="grey standard deviation (7x7) a pixel needs for the "
                               "epipolar test")


PREPROCESS_STEREO = StereoParams(num_depths=48)
"""The preprocessing pipeline's sweep (``DepthConfig.stereo``'s defaults) and ``mirage
eval-perception``'s: 48 planes on frames already at ``depth.scale`` (see the module docstring)."""

GENERATION_STEREO = StereoParams()
"""Per-pixel sweeps at generation time, at the frames' own size: 64 planes (the class defaults)."""

WRITEBACK_CELL_STEREO = CellStereoParams(min_parallax_px=0.0)
"""The latent memory's write-back sweep: parallax is checked before it, in frame pixels
(``generation.writeback.MIN_PARALLAX_PX``), so the sweep does not check it again."""
