"""One-prefix scoring: encode an image once, then score all of its questions against it.

The usual scorer runs one full forward per (image, question): the vision tower and
the hundreds of image tokens are recomputed for every element of a prompt. Here each
image's shared prefix (system turn, user header, image block, and the question text
that all of the image's questions begin with, i.e. the T2I prompt and its structural
information) runs once with a KV cache; then every question's remaining tokens run
in one batched pass over that cache, expanded to one row per question. Only the
first-answer-token logits are computed (one position per row), never ``generate()``.

The token sequences are exactly those of ``adapter.encode`` (the adapter guarantees
prefix ids + suffix ids == encode ids), and the position ids are those of the full
forward: Qwen2.5-VL's multimodal (3-D) rope positions are computed for the prefix
with the model's own ``get_rope_index`` and continued as text positions for the
suffix; 1-D rope models get positions counted from each row's first real token.
Several images' prefixes can run in one left-padded batch (``prefix_batch``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .loss import _unwrap

SEQUENCE_KEYS = ("input_ids", "attention_mask")


@dataclass
class PrefixState:
    """The cached prefixes of a batch of images (rows), ready for suffix passes."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, heads, P, head_dim)
    mask: torch.Tensor                           # (B, P) prefix attention mask, left-padded
    next_pos: torch.Tensor                       # (B,) position id of each row's first suffix token
    mrope: bool                                  # 3-D (Qwen2.5-VL) positions rather than 1-D


# --------------------------------------------------------------------------- support
def unsupported_reason(adapter, model=None) -> str | None:
    """Why the fast path cannot serve this model (None when it can)."""
    model = adapter.model if model is None else model
    base = _unwrap(model)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return f"{type(base).__name__}.forward has no inspectable signature"
    missing = [p for p in ("logits_to_keep", "cache", "position_ids") if p not in params]
    if missing:
        return f"{type(base).__name__}.forward takes no {missing} (e.g. a remote-code checkpoint)"
    text_cfg = base.config.get_text_config(decoder=True)
    kinds = set(getattr(text_cfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        # A sliding-window cache keeps only the window; an expanded copy of it would not
        # reproduce the full forward's mask.
        return f"{type(base).__name__} has {sorted(kinds)} layers; only full attention is supported"
    return None


def check_supported(adapter, model=None) -> None:
    reason = unsupported_reason(adapter, model)
    if reason is not None:
        raise NotImplementedError(f"one-prefix scoring ({adapter.family}): {reason}")


def _rope_index_fn(model):
    """The model's multimodal rope index function, or None for 1-D rope models."""
    inner = getattr(_unwrap(model), "model", None)
    return getattr(inner, "get_rope_index", None)


# --------------------------------------------------------------------------- encoding
def _common_prefix_length(rows: list[list[int]]) -> int:
    """Tokens that every row starts with, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return max(n, 0)


def encode_image_questions(adapter, image, questions: Sequence[str], share_context: bool = True):
    """The prefix batch (one row) of one image and the suffix token lists of its questions.

    With ``share_context`` the tokens that all suffixes begin with (the question text
    common to all of the image's questions) move into the prefix, so they run once.
    """
    prefix = adapter.encode_prefix(image)
    enc = adapter.encode_suffixes(list(questions))
    suffixes = [ids[:n].tolist() for ids, n in zip(enc["input_ids"], enc["lengths"].tolist())]
    shared = _common_prefix_length(suffixes) if share_context else 0
    if shared:
        extra = torch.tensor([suffixes[0][:shared]], dtype=prefix["input_ids"].dtype)
        token_keys = _token_keys(adapter, prefix)
        image_inputs = {k: v for k, v in prefix.items() if k not in token_keys}
        ids = torch.cat([prefix["input_ids"], extra], dim=1)
        mask = torch.cat([prefix["attention_mask"], torch.ones_like(extra)], dim=1)
        prefix = {"input_ids": ids, "attention_mask": mask, **image_inputs,
                  **adapter.extra_inputs(ids, image_inputs)}
        suffixes = [s[shared:] for s in suffixes]
    return prefix, suffixes


def _token_keys(adapter, batch: dict) -> set[str]:
    """The per-token fields of a batch: ids, mask and the family's id-derived inputs."""
    return set(SEQUENCE_KEYS) | set(adapter.extra_inputs(batch["input_ids"], {}))


def merge_prefixes(adapter, prefixes: Sequence[dict]) -> dict:
    """One LEFT-padded batch from single-row prefix batches.

    Per-token fields are padded on the left (ids with the pad token, the rest with 0);
    image tensors (pixels, grids, ...) are concatenated in row order, which is how the
    models assign image features to placeholders.
    """
    if len(prefixes) == 1:
        return dict(prefixes[0])
    width = max(p["input_ids"].shape[1] for p in prefixes)
    token_keys = _token_keys(adapter, prefixes[0])
    out = {}
    for k in prefixes[0]:
        values = [p[k] for p in prefixes]
        if k in token_keys:
            fill = adapter.tokenizer.pad_token_id if k == "input_ids" else 0
            out[k] = torch.cat([torch.nn.functional.pad(v, (width - v.shape[1], 0), value=fill) for v in values])
        elif torch.is_tensor(values[0]):
            out[k] = torch.cat(values, dim=0)
        else:
            raise TypeError(f"prefix batch field {k!r} is a {type(values[0]).__name__}, not a tensor")
    return out


def pad_suffixes(suffixes: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """RIGHT-padded ids and mask of token lists, and their lengths."""
    lengths = torch.tensor([len(s) for s in suffixes])
    if bool((lengths == 0).any()):
        raise ValueError("a question has no tokens after the prefix")
    ids = torch.full((len(suffixes), int(lengths.max())), pad_token_id, dtype=torch.long)
    for i, s in enumerate(suffixes):
        ids[i, : len(s)] = torch.tensor(s)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "lengths": lengths}


# --------------------------------------------------------------------------- forwards
@torch.no_grad()
def prefill(adapter, model, batch: dict) -> PrefixState:
    """Run the prefixes once with a KV cache; positions as in the full forward."""
    inputs = adapter.prepare(batch)
    mask = inputs["attention_mask"]
    rope_index = _rope_index_fn(model)
    mrope = rope_index is not None and "mm_token_type_ids" in inputs
    if mrope:
        rope_keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
        pos, _ = rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                            attention_mask=mask, **{k: inputs[k] for k in rope_keys if k in inputs})
        # Text positions go on from the largest position of the image block and text before.
        next_pos = pos.masked_fill(~mask.bool()[None], -1).amax(dim=(0, 2)) + 1
    else:
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        next_pos = mask.long().sum(-1)
    cache = DynamicCache()
    model(**inputs, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    if any(k is None or k.shape[-2] != mask.shape[1] for k, _ in kv):
        raise RuntimeError("the prefix cache does not hold every prefix position in every layer")
    return PrefixState(kv=kv, mask=mask, next_pos=next_pos, mrope=mrope)


@torch.no_grad()
def suffix_label_logits(adapter, model, state: PrefixState, rows: torch.Tensor, suffixes: dict,
                        label_ids: torch.Tensor) -> torch.Tensor:
    """Label logits at the first answer position of each suffix row: [R, L] float32.

    ``rows[r]`` is the prefix row (image) that suffix r continues; ``suffixes`` is a
    RIGHT-padded batch (``pad_suffixes``). Right padding keeps every real token's
    causal context free of padding, and the LM head reads one position per row.
    """
    device = state.mask.device
    rows = rows.to(device)
    ids = suffixes["input_ids"].to(device)
    lengths = suffixes["lengths"].to(device)
    cache = DynamicCache(ddp_cache_data=[(k.index_select(0, rows), v.index_select(0, rows)) for k, v in state.kv])
    mask = torch.cat([state.mask.index_select(0, rows), suffixes["attention_mask"].to(device, state.mask.dtype)], 1)
    pos = state.next_pos.index_select(0, rows)[:, None] + torch.arange(ids.shape[1], device=device)[None, :]
    if state.mrope:
        pos = pos[None].expand(3, -1, -1)  # text tokens: the same position on all three axes
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                logits_to_keep=(lengths - 1)[:, None])
    logits = out.logits[:, 0]
    return logits.index_select(-1, torch.as_tensor(label_ids, device=logits.device).long()).float()


def score_image_batch(adapter, images: Sequence, questions: Sequence[Sequence[str]], label_ids, *,
                      model=None, suffix_batch: int = 64, share_context: bool = True) -> list[torch.Tensor]:
    """Label logits of every question of each image, one prefill for all the images.

    Returns one [len(questions[i]), L] float32 tensor per image, rows in question order.
    """
    model = adapter.model if model is None else model
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} question lists")
    if suffix_batch < 1:
        raise ValueError(f"suffix_batch must be >= 1, got {suffix_batch}")
    label_ids = torch.as_tensor(label_ids).long()
    out = [torch.empty(0, len(label_ids)) for _ in images]
    todo = [i for i, qs in enumerate(questions) if len(qs)]
    if not todo:
        return out
    prefixes, suffixes, rows = [], [], []
    for b, i in enumerate(todo):
        prefix, suf = encode_image_questions(adapter, images[i], questions[i], share_context)
        prefixes.append(prefix)
        suffixes += suf
        rows += [b] * len(suf)
    pad = adapter.tokenizer.pad_token_id
    state = prefill(adapter, model, merge_prefixes(adapter, prefixes))
    rows = torch.tensor(rows)
    parts = []
    for s in range(0, len(suffixes), suffix_batch):
        chunk = pad_suffixes(suffixes[s:s + suffix_batch], pad)
        parts.append(suffix_label_logits(adapter, model, state, rows[s:s + suffix_batch], chunk, label_ids).cpu())
    # Suffix rows run image by image, so each image's rows are one slice.
    for i, block in zip(todo, torch.cat(parts).split([len(questions[i]) for i in todo])):
        out[i] = block
    return out


def prefix_label_logits(adapter, images: Sequence, questions: Sequence[Sequence[str]], label_ids, *,
                        model=None, prefix_batch: int = 1, suffix_batch: int = 64,
                        share_context: bool = True) -> list[torch.Tensor]:
    """Label logits of every (image, question), ``prefix_batch`` images per prefill.

    ``questions[i]`` lists image i's questions (any number, also none); returns one
    [len(questions[i]), L] float32 tensor per image. The model (default: the
    adapter's; a peft-wrapped one works the same) is used as it is, in eval mode.
    """
    model = adapter.model if model is None else model
    check_supported(adapter, model)
    if prefix_batch < 1:
        raise ValueError(f"prefix_batch must be >= 1, got {prefix_batch}")
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} question lists")
    out: list[torch.Tensor] = []
    for s in range(0, len(images), prefix_batch):
        out += score_image_batch(adapter, images[s:s + prefix_batch], questions[s:s + prefix_batch], label_ids,
                                 model=model, suffix_batch=suffix_batch, share_context=share_context)
    return out


def naive_label_logits(adapter, images: Sequence, questions: Sequence[Sequence[str]], label_ids, *,
                       model=None, batch_size: int = 8) -> list[torch.Tensor]:
    """The reference: one full forward per (image, question), ``batch_size`` pairs a batch."""
    from .loss import answer_label_logits

    model = adapter.model if model is None else model
    pairs = [(i, img, q) for i, (img, qs) in enumerate(zip(images, questions)) for q in qs]
    label_ids = torch.as_tensor(label_ids).long()
    logits = []
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            batch = adapter.prepare(adapter.encode([p[1] for p in chunk], [p[2] for p in chunk]))
            logits.append(answer_label_logits(model, batch, label_ids.to(adapter.device)).cpu())
    flat = torch.cat(logits) if logits else torch.empty(0, len(label_ids))
    owner = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    return [flat[owner == i] for i in range(len(images))]
