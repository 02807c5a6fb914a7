"""InternVL: native "-hf" checkpoints, and the original remote-code ones by explicit opt-in."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer, GotOcr2ImageProcessorPil, InternVLForConditionalGeneration

from .base import LVLMAdapter, read_checkpoint_config, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register("internvl")
class InternVLAdapter(LVLMAdapter):
    """InternVL "-hf" checkpoints (e.g. OpenGVLab/InternVL3-8B-hf, -38B-hf) and the tiny demo base.

    Each image is cut into up to ``max_patches`` square tiles of the vision tower's
    size (plus a thumbnail when there is more than one), each tile giving
    ``image_seq_length`` tokens after pixel shuffle; ``max_patches=1`` keeps one
    tile per image. Parameter names: ``model.vision_tower``,
    ``model.multi_modal_projector``, ``model.language_model``, ``lm_head``.
    """

    model_class = InternVLForConditionalGeneration
    model_types = ("internvl",)
    vision_modules = ("vision_tower", "multi_modal_projector")
    image_option_names = ("max_patches", "min_patches")

    def _token(self, name: str, default: str) -> str:
        return getattr(self.tokenizer, name, None) or default

    @property
    def image_placeholder(self) -> str:
        return self._token("context_image_token", "<IMG_CONTEXT>")

    @property
    def image_seq_length(self) -> int:
        return int(self.model.config.image_seq_length)

    def process_images(self, images):
        # InternVLProcessor tiles images by default; the bare image processor does not.
        kwargs = {"crop_to_patches": True, **self.image_call_kwargs}
        out = self.image_processor(images=images, return_tensors="pt", **kwargs)
        start, end = self._token("start_image_token", "<img>"), self._token("end_image_token", "</img>")
        expansions = [start + self.image_placeholder * (self.image_seq_length * int(n)) + end
                      for n in out["num_patches"]]
        return {"pixel_values": out["pixel_values"]}, expansions


@register("internvl", remote_code=True)
class InternVLRemoteAdapter(InternVLAdapter):
    """Original InternVL2.5 checkpoints (e.g. OpenGVLab/InternVL2_5-26B, -38B), which ship
    their own modelling code (InternVLChatModel; InternLM2 or Qwen2.5 language model).

    Selected only by ``load_adapter('internvl', path, trust_remote_code=True)``. The
    prompt follows their conversation format (system message, ``<image>`` expanded to
    ``<img>`` + 256 context tokens per 448 px tile + ``</img>``), images are tiled as
    their ``dynamic_preprocess`` does (up to 12 tiles plus a thumbnail, ImageNet
    normalisation), and the forward takes ``image_flags``. Parameter names:
    ``vision_model``, ``mlp1``, ``language_model``.
    """

    model_types = ("internvl_chat",)
    lora_target_regex = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
                         r"|wqkv|wo|w1|w2|w3)")
    vision_modules = ("vision_model", "mlp1")
    system_message = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
                      "多模态大语言模型。")

    @classmethod
    def load_model(cls, path, dtype, **kwargs):
        model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=True, **kwargs)
        if not hasattr(model, "img_context_token_id"):
            raise ValueError(f"{path!r} loaded as {type(model).__name__}, not an InternVL chat model")
        return model

    @classmethod
    def load_tokenizer(cls, path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @classmethod
    def load_image_processor(cls, path, options):
        size = int(read_checkpoint_config(path).get("force_image_size") or 448)
        return GotOcr2ImageProcessorPil(size={"height": size, "width": size}, image_mean=IMAGENET_MEAN,
                                        image_std=IMAGENET_STD, **options)

    @classmethod
    def load_template(cls, path, tokenizer):
        return ""  # the conversation format is fixed in prompt_text

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")

    @property
    def image_placeholder(self) -> str:
        return "<image>"

    @property
    def image_seq_length(self) -> int:
        return int(self.model.num_image_token)

    def prompt_text(self, question: str) -> str:
        return (f"<|im_start|>system\n{self.system_message}<|im_end|>\n"
                f"<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n")

    def process_images(self, images):
        kwargs = {"crop_to_patches": True, **self.image_call_kwargs}
        out = self.image_processor(images=images, return_tensors="pt", **kwargs)
        expansions = ["<img>" + "<IMG_CONTEXT>" * (self.image_seq_length * int(n)) + "</img>"
                      for n in out["num_patches"]]
        flags = torch.ones(out["pixel_values"].shape[0], 1, dtype=torch.long)
        return {"pixel_values": out["pixel_values"], "image_flags": flags}, expansions

    def last_logits(self, batch, model=None):
        # The remote forward has no logits_to_keep.
        model = self.model if model is None else model
        inputs = {k: v for k, v in self.prepare(batch).items() if k != "labels"}
        return model(**inputs, use_cache=False).logits[:, -1, :].float()
