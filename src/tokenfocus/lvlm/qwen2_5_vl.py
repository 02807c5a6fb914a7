"""Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct, -32B, and the tiny demo base)."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from .base import LVLMAdapter, register


@register("qwen2_5_vl")
class Qwen25VLAdapter(LVLMAdapter):
    """Images become 14 px patches merged 2x2: one token per 28x28 pixels.

    Resolution limits: ``min_pixels`` / ``max_pixels`` (pixels per image, as in the
    Qwen processor; the 7B default allows up to 12.8M). Parameter names: vision
    tower ``model.visual.*`` with projector ``model.visual.merger``, language model
    ``model.language_model.*``, ``lm_head``.

    Positions are 3-D (mrope) and computed from ``mm_token_type_ids``: the text after an
    image continues from the image block's largest position + 1, not from its token count.
    A suffix scored against a cached prefix therefore needs explicit positions
    ``prefix_len + arange(len) + rope_delta`` (the model keeps ``rope_deltas`` from the
    prefix forward), broadcast to the three mrope axes.
    """

    model_class = Qwen2_5_VLForConditionalGeneration
    model_types = ("qwen2_5_vl",)
    vision_modules = ("visual",)
    image_option_names = ("min_pixels", "max_pixels")
    image_block_end = "<|vision_end|>"

    @property
    def image_placeholder(self) -> str:
        return getattr(self.tokenizer, "image_token", None) or "<|image_pad|>"

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def process_images(self, images):
        out = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size ** 2
        counts = (out["image_grid_thw"].prod(dim=1) // merge).tolist()
        inputs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        return inputs, [self.image_placeholder * int(n) for n in counts]

    def extra_inputs(self, input_ids, image_inputs):
        # The 3-D rotary positions are computed from these (1 = image token); without
        # them the model silently falls back to 1-D positions.
        return {"mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32)}
