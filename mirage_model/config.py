"""The one configuration system: strict pydantic models, loaded from YAML with dotted overrides.

Every configurable object of the project -- a training sample's construction, a training stage, a
whole job -- is a :class:`StrictConfig`: unknown keys are errors, every field is typed and described
(``Field(description=...)``), and the model *is* the configuration (no dataclass mirror of it is
kept anywhere). Jobs nest the model layer's configs instead of copying their fields.

One loader serves every job::

    cfg = load_config(TrainConfig, "configs/train/tiny.yaml", ["data.shards=runs/shards", "stages.0.lr=1e-4"])

``key=value`` overrides use dotted paths (list items by index); values are parsed as YAML scalars
(``true``, ``null``, ``1e-4``, ``[128, 160]``), so the command line and the YAML file mean the same.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PathField", "StrictConfig", "apply_overrides", "load_config", "parse_override", "path_values", "to_yaml"]

T = TypeVar("T", bound="StrictConfig")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class StrictConfig(BaseModel):
    """Base of every configuration model: unknown keys are rejected, defaults are validated, and a
    number given for a text field is taken as text (``--set name=2024``, ``experiment: 7``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, coerce_numbers_to_str=True)


def PathField(default: Any = ..., *, description: str, output: bool = False,  # noqa: N802 - a Field
              keywords: tuple[str, ...] = ()) -> Any:
    """A ``Field`` that holds a local path or a URI (``s3://...``): ``output`` for what a job
    writes, else what it reads; ``keywords`` are values that name something else (``"tiny"``).
    Marked so that code moving a config to another machine (``mirage submit``) can find every
    path in it (``path_values``)."""
    return Field(default, description=description,
                 json_schema_extra={"path": "output" if output else "input", "keywords": list(keywords)})


def path_values(cfg: BaseModel, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, value, "input" | "output")`` of every ``PathField`` of ``cfg`` and of the
    configs nested in it that holds a value."""
    out = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        key = f"{prefix}{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "path" in extra and isinstance(value, str) and value and value not in extra.get("keywords", ()):
            out.append((key, value, str(extra["path"])))
        elif isinstance(value, BaseModel):
            out += path_values(value, key + ".")
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=1e-4"`` -> ``("a.b", 0.0001)``: the value is read as YAML (so ``null``, lists, ...)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. data.shards=runs/shards")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({exc})") from None
    if isinstance(value, str) and _EXPONENT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in ``data`` (in place; returned). A mapping's ``None`` values are skipped (an
    unset command-line flag); strings ``KEY=VALUE`` always apply (``KEY=null`` sets None)."""
    items = ([parse_override(s) for s in overrides] if not isinstance(overrides, Mapping)
             else [(k, v) for k, v in overrides.items() if v is not None])
    for dotted, value in items:
        node: Any = data
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            if isinstance(node, list):
                node = node[_index(node, part, dotted)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, (dict, list)):
                raise ValueError(f"override {dotted}: {'.'.join(parents[:i + 1])} is a value, not a section")
            node = child
        if isinstance(node, list):
            node[_index(node, leaf, dotted)] = value
        else:
            node[leaf] = value
    return data


def _index(items: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ValueError(f"override {dotted}: {part!r} is not an index of a list of {len(items)} items")
    return int(part)


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                *overrides: Mapping[str, Any] | Sequence[str]) -> T:
    """Read ``path`` (YAML; None: defaults only), apply each of ``overrides`` in turn (see
    :func:`apply_overrides`) and validate as ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config {p}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {p}: expected a mapping at the top level, got {type(data).__name__}")
    for items in overrides:
        apply_overrides(data, items)
    return cls.model_validate(data)


def to_yaml(cfg: BaseModel) -> str:
    """The resolved configuration as YAML (``mirage <job> --print-config``); loads back unchanged."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
