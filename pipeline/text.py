"""Captions and their text-encoder states, for ``mirage preprocess``.

* ``find_caption``: a clip's caption and where it came from -- the ``caption`` field of the
  source's ``.jsonl`` row, else a sidecar text file next to the video, else none
  (``captions.method``). ``DecodeClips`` puts it into the clip's payload; ``EncodeSample`` writes
  it into ``meta.json`` (``caption``, ``caption_source``), the publisher into the manifest.
* ``EncodeText``: a Ray Data stage (an actor pool, ``map_batches``) that runs the text encoder
  once per distinct caption of a batch of clips, on a GPU when the stage asks for one, and stores
  the states of the caption and of the empty prompt with each clip (``text.safetensors``), so that
  training never loads the text encoder (``jobs.train``).
* ``text_stack_id_at``: the identity of a text encoder (``mirage_model.model.text.text_stack_id``)
  read on any storage, which the shards record and training checks against its own model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from . import storage
from .config import TEXT_PRESETS, PreprocessConfig
from .storage import StorageOptions

log = logging.getLogger(__name__)

TEXT_STACK_DIRS = ("text_encoder", "tokenizer")
"""The parts of a diffusers pipeline directory that make its text stack."""


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
        from .stages import InputError

        raise InputError("bad_caption", f"{sidecar}: not UTF-8 text ({exc})") from exc
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


class EncodeText:
    """Clip rows in batches -> each ok clip's payload gains ``text`` (the caption's and the empty
    prompt's encoder states, without padding) and ``text_meta`` (encoder identity, prompt tokens,
    dtype). The encoder is loaded once per actor, on the GPU when ``text_embeddings.num_gpus`` > 0
    and one is there (else the CPU, with a warning); a batch's distinct captions go through it in
    one call. A clip whose caption fails to encode is rejected (``text_failed``) alone."""

    name = "text"
    reason = "text_failed"

    def __init__(self, config: PreprocessConfig):
        from mirage_model.model.text import build_text_stack, encode_prompt_states, load_text_stack

        from .stages import limit_threads

        limit_threads(config)
        cfg = config.text_embeddings
        if cfg.model is None:
            raise ValueError("EncodeText needs text_embeddings.model")
        gpu = cfg.num_gpus > 0 and torch.cuda.is_available()
        if cfg.num_gpus > 0 and not gpu:
            log.warning("text_embeddings.num_gpus=%s but this worker sees no GPU: encoding on the CPU (slow)",
                        cfg.num_gpus)
        self.device = torch.device("cuda" if gpu else "cpu")
        dtype = getattr(torch, cfg.dtype or ("bfloat16" if gpu else "float32"))
        options = config.storage.options()
        if cfg.model in TEXT_PRESETS:
            self.tokenizer, encoder = build_text_stack(cfg.model, seed=cfg.seed)
        else:
            self.tokenizer, encoder = load_text_stack(storage.local_copy(cfg.model, options), dtype=dtype)
        self.encoder = encoder.to(device=self.device, dtype=dtype)
        self.max_length = cfg.tokens()
        self._encode = encode_prompt_states
        self.meta = {"encoder": text_stack_id_at(cfg.model, cfg.seed, options), "model": cfg.model,
                     "tokens": self.max_length, "dtype": str(dtype).removeprefix("torch.")}
        self.empty = self._states([""])[0]
        log.info("text encoder %s (%s) on %s, %d tokens", cfg.model, self.meta["encoder"], self.device,
                 self.max_length)

    def _states(self, captions: list[str]) -> list[torch.Tensor]:
        return [s.to(self.encoder.dtype) for s in self._encode(self.tokenizer, self.encoder, captions,
                                                               self.max_length)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from .stages import ROW_KEYS, pack, peak_rss_mib, reject, unpack

        t0 = time.perf_counter()
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        todo = [(row, unpack(row)) for row in rows if row["status"] == "ok"]
        captions = [data.get("caption", {}).get("text", "") for _, data in todo]
        try:
            distinct = list(dict.fromkeys(captions))
            states = dict(zip(distinct, self._states(distinct)))
        except Exception:  # noqa: BLE001 - find the caption that fails, encode the others
            states = {}
            for caption in dict.fromkeys(captions):
                try:
                    states[caption] = self._states([caption])[0]
                except Exception as exc:  # noqa: BLE001
                    states[caption] = exc
        for (row, data), caption in zip(todo, captions):
            got = states[caption]
            if isinstance(got, Exception):
                reject(row, self.reason, f"{type(got).__name__}: {got}")
                continue
            data["text"] = {"caption": got, "empty": self.empty}
            data["text_meta"] = self.meta
            row["payload"] = pack(data)
        seconds = (time.perf_counter() - t0) / max(1, len(todo))
        for row, _ in todo:
            row[f"t_{self.name}"], row[f"rss_{self.name}"] = seconds, peak_rss_mib()
        return {k: [row[k] for row in rows] for k in ROW_KEYS}
