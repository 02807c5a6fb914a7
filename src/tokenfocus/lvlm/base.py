"""What every LVLM family shares: loading, chat prompts, batching, label tokens.

A family adapter (one small subclass) says how its images become pixel tensors and
how many placeholder tokens one image takes; everything else lives here:

* ``encode(images, questions, answers=None)`` renders each question with the
  checkpoint's chat template (one image, then the question, then the assistant
  header), expands the image placeholder, and LEFT-pads the batch, so that the
  logits at the last position predict the first answer token. With answers it
  appends answer + end-of-turn and returns ``labels`` (-100 on prompt and padding)
  for plain next-token SFT.
* ``encode_prefix(image)`` / ``encode_suffixes(questions)`` split the same token
  sequence after the image block, for scoring many questions against one encoded
  image: prefix ids followed by a suffix's ids equal ``encode``'s ids for that
  (image, question) exactly.
* ``label_ids(labels)`` resolves label strings to token ids from the tokenizer
  (each must be exactly one token), never from hard-coded ids.

The composite transformers processors (Qwen2_5_VLProcessor, InternVLProcessor)
refuse to be built without torchvision even for images only, so the adapter drives
the tokenizer and image processor itself and does the placeholder expansion those
processors do: the tokens and pixels are the same.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import cached_file

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IGNORE_INDEX = -100

_REGISTRY: dict[tuple[str, bool], type["LVLMAdapter"]] = {}


def register(family: str, *, remote_code: bool = False):
    """Class decorator: make an adapter reachable as ``load_adapter(family, ...)``."""

    def deco(cls):
        key = (family, remote_code)
        if key in _REGISTRY:
            raise ValueError(f"adapter already registered for {key}")
        cls.family = family
        _REGISTRY[key] = cls
        return cls

    return deco


def families() -> list[str]:
    return sorted({family for family, _ in _REGISTRY})


def adapter_class(family: str, remote_code: bool = False) -> type["LVLMAdapter"]:
    """The adapter class registered for ``family`` (its parameter rules, model class)."""
    if (family, remote_code) not in _REGISTRY:
        raise ValueError(f"unknown LVLM family {family!r}{' (remote code)' if remote_code else ''}; known: {families()}")
    return _REGISTRY[(family, remote_code)]


def read_checkpoint_config(path: str) -> dict:
    """config.json of a local directory or hub id, as a dict (no model class needed)."""
    file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
    if file is None:
        raise FileNotFoundError(f"no config.json in checkpoint {path!r}")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def load_adapter(
    family: str,
    path: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    **image_options: Any,
) -> "LVLMAdapter":
    """Load a base (or merged) checkpoint of `family` from a local path or hub id.

    `trust_remote_code=True` is an explicit opt-in that selects the family's
    remote-code adapter (e.g. the original InternVL2.5 checkpoints); without it a
    checkpoint that needs remote code is refused with a message saying so.
    `image_options` are the family's resolution limits (see each adapter's
    ``image_option_names``; ``image_size`` caps the longer image side for all).
    `model_kwargs` go to the model's ``from_pretrained`` (e.g. a bitsandbytes
    ``quantization_config``; a quantized model is placed with ``device_map``).
    """
    adapter_class(family)
    if trust_remote_code and (family, True) not in _REGISTRY:
        raise ValueError(f"family {family!r} has no remote-code adapter; drop trust_remote_code")
    cls = adapter_class(family, trust_remote_code)
    return cls.from_pretrained(path, dtype=dtype, device=device, model_kwargs=model_kwargs, **image_options)


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _load_chat_template(path: str, tokenizer) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    # Some checkpoints keep the template beside the processor only.
    for name in ("chat_template.jinja", "chat_template.json"):
        file = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        if file is None:
            continue
        with open(file, encoding="utf-8") as f:
            text = f.read()
        return json.loads(text)["chat_template"] if name.endswith(".json") else text
    raise ValueError(f"checkpoint {path!r} has no chat template (tokenizer or chat_template.jinja/json)")


class LVLMAdapter:
    """One loaded LVLM: model, tokenizer, image processor and chat template."""

    family: ClassVar[str] = ""
    model_class: ClassVar[Any] = None            # transformers class used by from_pretrained
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type values this adapter serves
    lora_target_regex: ClassVar[str] = r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"
    # Module names of the vision tower and projector (trained at vision_lr, never quantised).
    vision_modules: ClassVar[tuple[str, ...]] = ()
    image_option_names: ClassVar[tuple[str, ...]] = ()     # family resolution limits
    end_of_turn: ClassVar[str] = "<|im_end|>"
    image_block_end: ClassVar[str] = ""  # template text that closes the image block, if any

    def __init__(self, model, tokenizer, image_processor, chat_template: str, *,
                 image_size: int | None = None, name_or_path: str = "", image_call_kwargs=None):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.image_size = image_size
        self.name_or_path = name_or_path
        self.image_call_kwargs = dict(image_call_kwargs or {})
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has no pad token")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str, *, dtype="float32", device="cpu", image_size=None,
                        model_kwargs: dict[str, Any] | None = None, **options):
        unknown = set(options) - set(cls.image_option_names)
        if unknown:
            raise ValueError(f"{cls.family}: unknown image option(s) {sorted(unknown)}; "
                             f"allowed: {['image_size', *cls.image_option_names]}")
        cls.check_checkpoint(path)
        kwargs = dict(model_kwargs or {})
        if "quantization_config" in kwargs:
            # Quantized weights cannot be moved after loading: place them while loading.
            kwargs.setdefault("device_map", {"": str(device)})
        model = cls.load_model(path, _resolve_dtype(dtype), **kwargs)
        model = (model if "device_map" in kwargs else model.to(device)).eval()
        tokenizer = cls.load_tokenizer(path)
        image_processor = cls.load_image_processor(path, {k: v for k, v in options.items() if v is not None})
        template = cls.load_template(path, tokenizer)
        return cls(model, tokenizer, image_processor, template, image_size=image_size, name_or_path=str(path),
                   image_call_kwargs={k: v for k, v in options.items() if v is not None})

    @classmethod
    def check_checkpoint(cls, path: str) -> None:
        model_type = read_checkpoint_config(path).get("model_type")
        if model_type not in cls.model_types:
            hint = ""
            if model_type == "internvl_chat":
                hint = (" This is an original remote-code InternVL checkpoint: opt in explicitly with "
                        "trust_remote_code=True (trust_remote_code: true in the model's config entry), "
                        "or use its '-hf' conversion.")
            raise ValueError(f"checkpoint {path!r} has model_type {model_type!r}; the {cls.family!r} adapter "
                             f"serves {list(cls.model_types)}.{hint}")

    @classmethod
    def load_model(cls, path: str, dtype: torch.dtype, **kwargs):
        return cls.model_class.from_pretrained(path, dtype=dtype, **kwargs)

    @classmethod
    def load_tokenizer(cls, path: str):
        return AutoTokenizer.from_pretrained(path)

    @classmethod
    def load_image_processor(cls, path: str, options: dict):
        return AutoImageProcessor.from_pretrained(path, **options)

    @classmethod
    def load_template(cls, path: str, tokenizer) -> str:
        return _load_chat_template(path, tokenizer)

    # ------------------------------------------------------------ family hooks
    @property
    def image_placeholder(self) -> str:
        """The text the chat template emits for one image (expanded by ``expand_image``)."""
        raise NotImplementedError

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Pixel tensors for a batch of images, and each image's expanded placeholder text."""
        raise NotImplementedError

    def extra_inputs(self, input_ids: torch.Tensor, image_inputs: dict) -> dict[str, torch.Tensor]:
        """Model inputs derived from the token ids (e.g. Qwen's token-type ids)."""
        return {}

    # ------------------------------------------------------------------- text
    def prompt_text(self, question: str) -> str:
        """The chat-templated prompt: one user turn (image, then question) and the assistant header."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True)

    def _split_point(self, text: str) -> int:
        """Index just after the image block in a templated prompt."""
        if text.count(self.image_placeholder) != 1:
            raise ValueError(f"{self.family}: expected one image placeholder {self.image_placeholder!r} "
                             f"in the templated prompt, found {text.count(self.image_placeholder)}")
        split = text.index(self.image_placeholder) + len(self.image_placeholder)
        if self.image_block_end and text.startswith(self.image_block_end, split):
            split += len(self.image_block_end)
        return split

    def _load_images(self, images) -> list[Image.Image]:
        out = []
        for img in images:
            if not isinstance(img, Image.Image):
                raise TypeError(f"expected PIL images, got {type(img).__name__}")
            img = img.convert("RGB")
            if self.image_size is not None and max(img.size) != self.image_size:
                scale = self.image_size / max(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.BICUBIC)
            out.append(img)
        return out

    def _tokenize(self, texts: list[str], padding_side: str) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, padding_side=padding_side, add_special_tokens=False,
                              return_tensors="pt")

    # ---------------------------------------------------------------- batches
    def encode(self, images: Sequence[Image.Image], questions: Sequence[str],
               answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for (image, question) pairs, left-padded.

        Without answers, the logits at position -1 predict the first answer token.
        With answers, each row ends with answer + end-of-turn and ``labels`` holds
        those tokens (-100 elsewhere); ``answer_positions(labels)`` gives, per row,
        the position whose logits predict the first answer token.
        """
        images, questions = list(images), list(questions)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        if answers is not None and len(answers) != len(questions):
            raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
        image_inputs, expansions = self.process_images(self._load_images(images))
        texts = []
        for q, expansion in zip(questions, expansions):
            text = self.prompt_text(q)
            split = self._split_point(text)  # validates the placeholder count
            texts.append(text[:split].replace(self.image_placeholder, expansion) + text[split:])
        tails = None
        if answers is not None:
            tails = [str(a) + self.end_of_turn for a in answers]
            texts = [t + tail for t, tail in zip(texts, tails)]
        enc = self._tokenize(texts, "left")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **image_inputs}
        batch.update(self.extra_inputs(enc["input_ids"], image_inputs))
        if tails is not None:
            batch["labels"] = self._answer_labels(enc["input_ids"], tails)
        return batch

    def _answer_labels(self, input_ids: torch.Tensor, tails: list[str]) -> torch.Tensor:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, tail in enumerate(tails):
            ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
            n = len(ids)
            if input_ids[i, -n:].tolist() != ids:
                raise ValueError(f"answer {tail!r} does not tokenize the same alone and after the prompt")
            labels[i, -n:] = input_ids[i, -n:]
        return labels

    @staticmethod
    def answer_positions(labels: torch.Tensor) -> torch.Tensor:
        """Per row, the position whose logits predict the first labelled token."""
        has = labels != IGNORE_INDEX
        if not bool(has.any(dim=1).all()):
            raise ValueError("a row has no labelled token")
        return has.int().argmax(dim=1) - 1

    def encode_prefix(self, image: Image.Image) -> dict[str, torch.Tensor]:
        """Inputs of a prefix forward for one image (batch of 1).

        The prefix is the templated prompt up to and including the image block
        (system turn, user header, image tokens); it does not depend on the
        question. For any question q, ``prefix["input_ids"][0]`` followed by the
        first ``lengths[j]`` ids of row j of ``encode_suffixes([..q..])`` equals
        ``encode([image], [q])["input_ids"][0]``.
        """
        image_inputs, expansions = self.process_images(self._load_images([image]))
        text = self.prompt_text("")
        split = self._split_point(text)
        prefix = text[:split].replace(self.image_placeholder, expansions[0])
        enc = self._tokenize([prefix], "left")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **image_inputs}
        batch.update(self.extra_inputs(enc["input_ids"], image_inputs))
        return batch

    def encode_suffixes(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The rest of each prompt after the prefix: question text, end of turn, assistant header.

        RIGHT-padded (B, L) ``input_ids`` and ``attention_mask``, and ``lengths`` (B,):
        row j's real tokens are ``input_ids[j, :lengths[j]]``, and the logits at
        position ``lengths[j] - 1`` (after the prefix) predict the first answer token.
        """
        shared = self.prompt_text("")[: self._split_point(self.prompt_text(""))]
        texts = []
        for q in questions:
            text = self.prompt_text(q)
            split = self._split_point(text)
            if text[:split] != shared:
                raise ValueError(f"{self.family}: the chat template puts question-dependent text before "
                                 "the image, so the prefix cannot be shared")
            texts.append(text[split:])
        enc = self._tokenize(texts, "right")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "lengths": enc["attention_mask"].sum(dim=1)}

    # ------------------------------------------------------------------ model
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch on the model's device, floating tensors (pixels) in the model's dtype."""
        out = {}
        for k, v in batch.items():
            if torch.is_tensor(v):
                v = v.to(self.device, dtype=self.dtype if v.is_floating_point() else None)
            out[k] = v
        return out

    def last_logits(self, batch: dict[str, torch.Tensor], model=None) -> torch.Tensor:
        """(B, vocab) float32 logits at the last position (the first answer token for an
        ``encode`` batch without answers); the LM head runs at that position only.
        `model` overrides the adapter's model (e.g. a peft-wrapped one)."""
        model = self.model if model is None else model
        inputs = {k: v for k, v in self.prepare(batch).items() if k != "labels"}
        out = model(**inputs, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, :].float()

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """Token id of each label string; each must be exactly one token."""
        ids = []
        for label in labels:
            toks = self.tokenizer(str(label), add_special_tokens=False)["input_ids"]
            if len(toks) != 1:
                pieces = self.tokenizer.convert_ids_to_tokens(toks)
                raise ValueError(f"{self.family} ({self.name_or_path}): label {label!r} is {len(toks)} tokens "
                                 f"{pieces}, not one")
            ids.append(int(toks[0]))
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.family}: labels {list(labels)} share token ids {ids}")
        logger.info("%s label ids: %s", self.family, dict(zip(map(str, labels), ids)))
        return ids

    def is_vision_param(self, name: str) -> bool:
        """Whether a parameter belongs to the vision tower or projector (works on peft names)."""
        return any(re.search(rf"(^|\.){re.escape(m)}\.", name) for m in self.vision_modules)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
