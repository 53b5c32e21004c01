"""Tiny models of the real architectures the pipeline's model stages load, with random weights,
saved by the tests in the layout of a downloaded checkpoint (nothing is downloaded). Their outputs
mean nothing; the loading, shapes, dtypes, batching and plumbing they exercise are the real ones."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_depth_anything(path: Path) -> Path:
    """Depth Anything (a DINOv2 backbone, DPT head) with its image processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=28, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
                              reassemble_hidden_size=32, head_hidden_size=16, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False,
                      ensure_multiple_of=14).save_pretrained(path)
    return path


CAPTION_WORDS = ("a the room wall floor chair table window camera moving red blue green light dark view of in with "
                 "describe video USER ASSISTANT").split()


def tiny_llava(path: Path) -> Path:
    """An image-text-to-text model (LLaVA: a CLIP vision tower, a Llama language model) with its
    processor and a chat template, as ``AutoProcessor`` / ``AutoModelForImageTextToText`` load a
    Qwen2.5-VL or LLaVA checkpoint. It generates words of ``CAPTION_WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    special = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    vocab = {t: i for i, t in enumerate(special + CAPTION_WORDS + [":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   chat_template=template, num_additional_image_tokens=1).save_pretrained(path)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2),
        image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    return path


def tiny_sam2_video(path: Path) -> Path:
    """A SAM2 video model (Hiera backbone, memory attention) at a 256-pixel input, random weights."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    cfg = Sam2VideoConfig(image_size=256, memory_attention_rope_feat_sizes=[16, 16], memory_attention_num_layers=1,
                          vision_config={"backbone_config": {"model_type": "sam2_hiera_det_model", "image_size": [256, 256],
                                                             "window_positional_embedding_background_size": [4, 4]},
                                         "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]]},
                          prompt_encoder_config={"image_size": 256})
    torch.manual_seed(0)
    Sam2VideoModel(cfg).save_pretrained(path)
    return path
