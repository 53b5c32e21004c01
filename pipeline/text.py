"""Captions and the identity of a text encoder, for ``mirage preprocess`` and ``mirage train``.

* ``find_caption``: a clip's caption and where it came from -- the ``caption`` field of the
  source's ``.jsonl`` row, else a sidecar text file next to the video, else none
  (``captions.method``). ``DecodeClips`` puts it into the clip's payload; ``EncodeSample`` writes
  it into ``meta.json`` (``caption``, ``caption_source``), the publisher into the manifest; the
  ``EncodeText`` stage (``pipeline.stages``) stores its text-encoder states with the clip.
* ``text_stack_id_at``: the identity of a text encoder (``mirage_model.model.text.text_stack_id``)
  read on any storage, which the shards record and training checks against its own model.
"""

from __future__ import annotations

from typing import Any

from . import storage
from .config import TEXT_PRESETS, PreprocessConfig
from .storage import StorageOptions

TEXT_STACK_DIRS = ("text_encoder", "tokenizer")
"""The parts of a diffusers pipeline directory that make its text stack."""


class CaptionError(ValueError):
    """A caption that cannot be read (manifest code ``bad_caption``)."""

    reason = "bad_caption"


def find_caption(item: dict[str, Any], config: PreprocessConfig, options: StorageOptions | None = None
                 ) -> dict[str, str]:
    """``{"text", "source"}`` of an input: ``manifest`` (its row's ``caption``), ``sidecar``
    (``<stem><captions.sidecar_suffix>`` next to the video, UTF-8, surrounding white space
    stripped) or ``""`` with no text."""
    if config.captions.method == "none":
        return {"text": "", "source": ""}
    given = str(item.get("caption") or "").strip()
    if given:
        return {"text": given, "source": "manifest"}
    sidecar = str(item["uri"]).rsplit(".", 1)[0] + config.captions.sidecar_suffix
    try:
        text = storage.read_bytes(sidecar, options).decode("utf-8").strip()
    except FileNotFoundError:
        text = ""
    except UnicodeDecodeError as exc:
        raise CaptionError(f"{sidecar}: not UTF-8 text ({exc})") from exc
    return {"text": text, "source": "sidecar" if text else ""}


def text_stack_id_at(model: str, seed: int = 0, options: StorageOptions | None = None) -> str:
    """The identity of the text encoder ``model`` names (a preset, or a pipeline directory on any
    storage): ``preset_text_id`` or ``text_stack_id`` of its ``text_encoder/config.json`` and the
    names and sizes of its text-stack files (no weights are read)."""
    from mirage_model.model.text import preset_text_id, text_stack_id

    if model in TEXT_PRESETS:
        return preset_text_id(model, seed)
    config = storage.join_uri(model, "text_encoder", "config.json")
    if not storage.exists(config, options):
        raise FileNotFoundError(f"{model}: no text encoder (expected {config})")
    files = {}
    for sub in TEXT_STACK_DIRS:
        for uri in storage.list_files(storage.join_uri(model, sub), options, suffixes=None):
            files[f"{sub}/{uri[uri.rindex(f'/{sub}/') + len(sub) + 2:]}"] = storage.size(uri, options)
    return text_stack_id(storage.read_bytes(config, options), files)
