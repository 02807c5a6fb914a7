"""Packed one-prefix training: all of an image's questions in one forward.

One sequence per image: the shared prefix (system turn, image block, and the question text that
all of the image's questions begin with: the T2I prompt and its structural information) once,
then each question's remaining tokens as a segment of its own (questions that begin alike, such
as an image's element questions with their common instruction, share that beginning as a stem
segment). A 4-D attention mask lets every question see the prefix, its stem and itself, never
another question; each question's positions continue
from the prefix end exactly as in that question's own full forward (Qwen2.5-VL's 3-D rope: text
positions after the image block, from the model's own ``get_rope_index``; 1-D rope models:
counted on from the prefix). The label logits are read at each segment's last token only: a
pre-hook on the LM head gathers those positions, so sequence x vocabulary logits never exist.

The token ids are those of ``adapter.encode`` (``fastscore.encode_image_questions`` guarantees
prefix + suffix == the full question), so the loss and its gradients equal those of the same
questions run one per forward (tests/test_packed.py, within 1e-5 in float32).

Attention backends: the mask is an additive float mask, which the eager and SDPA backends take
as it is. Flash-attention 2 takes no 4-D mask; ``check_backend`` refuses it with a message (set
``attn_implementation: sdpa``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .fastscore import _common_prefix_length, _rope_index_fn, _token_keys, encode_image_questions
from .loss import _output_head, _unwrap

PAD_SEGMENT = -1
PACKING_KEYS = ("segment_ids", "segment_parent", "text_offset", "answer_index", "labels")


def check_backend(model) -> None:
    """Refuse attention backends that cannot take a 4-D mask."""
    impl = getattr(_unwrap(model).config, "_attn_implementation", None) or ""
    if "flash" in str(impl):
        raise NotImplementedError(f"packed training needs a 4-D attention mask, which {impl!r} does not take; "
                                  "load the model with attn_implementation 'sdpa' (or set training.packing: false)")


MIN_STEM = 2   # shared tokens that make a stem segment worth its own block


def _stems(suffixes: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """Groups of questions that begin alike: (question indices, tokens they all begin with).

    Questions are grouped by their first token (an image's element questions share their
    instruction, the total question has another); a group of two or more shares the longest
    common beginning that leaves each question at least one token of its own."""
    groups: dict[int, list[int]] = {}
    for j, s in enumerate(suffixes):
        groups.setdefault(s[0], []).append(j)
    out = []
    for members in groups.values():
        stem: list[int] = []
        if len(members) > 1:
            n = _common_prefix_length([suffixes[j] for j in members])
            stem = suffixes[members[0]][:n] if n >= MIN_STEM else []
        out.append((members, stem))
    return out


def pack_batch(adapter, images: Sequence, questions: Sequence[Sequence[str]]) -> dict:
    """Model inputs of a packed batch: one RIGHT-padded row per image.

    A row is the image's prefix, then its questions as segments. Questions that begin alike
    (an image's element questions share their instruction) share a stem segment holding that
    beginning: each question's own tokens see the prefix, their stem and themselves.

    ``segment_ids`` (B, L): 0 on the prefix, -1 on padding, a positive id per stem or question
    segment; ``segment_parent`` (B, S): the segment each segment also sees (its stem, or 0);
    ``text_offset`` (B, L): a token's position counted from the prefix end, as in its
    question's own forward; ``answer_index`` (Q, 2): (row, position) whose logits predict
    question q's first answer token, questions in input order (image by image); image
    tensors as ``adapter.encode`` gives them. ``attention_mask`` is the 2-D mask of real
    tokens; ``packed_label_logits`` builds the 4-D one.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} question lists")
    rows, segments, offsets, parents, answers, prefixes = [], [], [], [], [], []
    for b, (image, qs) in enumerate(zip(images, questions)):
        if not qs:
            raise ValueError(f"image {b} of the batch has no questions")
        prefix, suffixes = encode_image_questions(adapter, image, qs, share_context=True)
        ids = prefix["input_ids"][0].tolist()
        seg, off, parent = [0] * len(ids), [-1] * len(ids), [0]
        at = {}

        def add(tokens, start, up):
            parent.append(up)
            ids.extend(tokens)
            seg.extend([len(parent) - 1] * len(tokens))
            off.extend(range(start, start + len(tokens)))
            return len(parent) - 1

        for members, stem in _stems(suffixes):
            up = add(stem, 0, 0) if stem else 0
            for j in members:
                add(suffixes[j][len(stem):], len(stem), up)
                at[j] = len(ids) - 1
        answers += [(b, at[j]) for j in range(len(suffixes))]
        rows.append(ids)
        segments.append(seg)
        offsets.append(off)
        parents.append(parent)
        prefixes.append(prefix)
    width, n_seg = max(len(r) for r in rows), max(len(p) for p in parents)
    pad = adapter.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    segment_ids = torch.full((len(rows), width), PAD_SEGMENT, dtype=torch.long)
    text_offset = torch.full((len(rows), width), -1, dtype=torch.long)
    segment_parent = torch.zeros((len(rows), n_seg), dtype=torch.long)
    for b, (ids, seg, off, parent) in enumerate(zip(rows, segments, offsets, parents)):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        segment_ids[b, :len(seg)] = torch.tensor(seg)
        text_offset[b, :len(off)] = torch.tensor(off)
        segment_parent[b, :len(parent)] = torch.tensor(parent)
    token_keys = _token_keys(adapter, prefixes[0])
    image_inputs = {k: torch.cat([p[k] for p in prefixes]) for k in prefixes[0] if k not in token_keys}
    batch = {"input_ids": input_ids, "attention_mask": (segment_ids != PAD_SEGMENT).long(),
             "segment_ids": segment_ids, "segment_parent": segment_parent, "text_offset": text_offset,
             "answer_index": torch.tensor(answers, dtype=torch.long), **image_inputs}
    batch.update(adapter.extra_inputs(input_ids, image_inputs))
    return batch


def segment_mask(segment_ids: torch.Tensor, dtype: torch.dtype,
                 segment_parent: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, L, L) additive mask: causal, and a token sees the prefix, its own segment and its
    segment's parent (``segment_parent``; none when omitted). Padding sees the prefix and
    padding, so no row is fully masked."""
    L = segment_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    key, query = segment_ids[:, None, :], segment_ids[:, :, None]
    allowed = (key == 0) | (key == query)
    if segment_parent is not None:
        up = torch.gather(segment_parent, 1, segment_ids.clamp(min=0))          # (B, L) parent per token
        up = torch.where(segment_ids > 0, up, torch.zeros_like(up))
        allowed = allowed | ((key == up[:, :, None]) & (up[:, :, None] > 0))
    allowed = causal[None] & allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def segment_positions(model, batch: dict) -> torch.Tensor:
    """Position ids as in each question's own forward: (B, L), or (3, B, L) for 3-D rope."""
    seg = batch["segment_ids"]
    prefix = (seg == 0).long()
    rope_index = _rope_index_fn(model)
    if rope_index is not None and "mm_token_type_ids" in batch:
        keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
        pos, _ = rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], attention_mask=prefix,
                            **{k: batch[k] for k in keys if k in batch})
        next_pos = pos.masked_fill(~prefix.bool()[None], -1).amax(dim=(0, 2)) + 1
    else:
        pos = None
        next_pos = prefix.sum(-1)
    index = torch.arange(seg.shape[1], device=seg.device).expand_as(seg)
    text = torch.where(seg == 0, index, next_pos[:, None] + batch["text_offset"].clamp(min=0))
    if pos is None:
        return text
    outside = (seg != 0)[None].expand_as(pos)
    return torch.where(outside, text[None].expand_as(pos), pos)


def packed_label_logits(model, batch: dict, label_ids: torch.Tensor) -> torch.Tensor:
    """Label-token logits at every question's first answer position: (Q, L) float32, in the
    order of ``batch['answer_index']``. One forward for the whole batch; the LM head runs at
    those Q positions only."""
    check_backend(model)
    inputs = {k: v for k, v in batch.items() if k not in PACKING_KEYS}
    at = batch["answer_index"].to(batch["input_ids"].device)
    dtype = next(model.parameters()).dtype
    inputs["attention_mask"] = segment_mask(batch["segment_ids"], dtype, batch.get("segment_parent"))
    inputs["position_ids"] = segment_positions(model, batch)

    def gather(_module, args):
        return (args[0][at[:, 0], at[:, 1]][None],) + tuple(args[1:])

    handle = _output_head(model).register_forward_pre_hook(gather)
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    return logits[0].index_select(-1, torch.as_tensor(label_ids, device=logits.device).long()).float()


@torch.no_grad()
def packed_image_logits(adapter, images: Sequence, questions: Sequence[Sequence[str]], label_ids, *,
                        model=None, image_batch: int = 4) -> list[torch.Tensor]:
    """Scoring the packed way: ``image_batch`` images a forward, all of their questions in it.
    Returns one [len(questions[i]), L] float32 tensor per image (images without questions get
    an empty one), like ``fastscore.prefix_label_logits``."""
    model = adapter.model if model is None else model
    label_ids = torch.as_tensor(label_ids).long()
    out = [torch.empty(0, len(label_ids)) for _ in images]
    todo = [i for i, qs in enumerate(questions) if len(qs)]
    for s in range(0, len(todo), image_batch):
        group = todo[s:s + image_batch]
        batch = adapter.prepare(pack_batch(adapter, [images[i] for i in group], [questions[i] for i in group]))
        logits = packed_label_logits(model, batch, label_ids.to(adapter.device)).cpu()
        for i, block in zip(group, logits.split([len(questions[i]) for i in group])):
            out[i] = block
    return out
