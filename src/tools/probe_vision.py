#!/usr/bin/env python
"""How fast can a Qwen2.5-VL vision tower of a given size learn the demo's shapes? A probe.

The tower alone (native class, random init) plus a linear head over its merged tokens (mean and
max pooled) is trained on image-level presence targets (which shapes, colours and background a
freshly drawn scene shows; pre-training's generic generator draws them) and scored on 800
held-out scenes every 250 steps: AUC per kind, appended as JSON lines to ``--log``.

    python src/tools/probe_vision.py --minutes 30 --log probe.jsonl
    python src/tools/probe_vision.py --patch 16 --merge 1 --hidden 128 --depth 6 --minutes 30

Measured on one core of the 2-core machine, batch 32, lr 1e-3 (colour and background AUC
>= 0.999 within minutes in every run):
- hidden 96, depth 4, 8 px patches (196 patches, 49 merged tokens: the demo bases' tower):
  shape AUC 0.627 after 8k images (3.9 min), 0.669 at 40k, 0.732 at 64k, 0.749 at 72k
  (28.7 min), still rising;
- hidden 128, depth 6, 16 px patches, no merge (49 tokens, half the time per image):
  0.624 at 8k (1.8 min), 0.669 at 72k, 0.684 at 136k (29.8 min), flat from 80k on.

``--dense`` trains on the bases' per-token-cell region words instead (what covers each of the
7 x 7 token cells) and reports ``shape_cell_accuracy``: the argmax shape on cells that show one
shape (chance 0.2). ``--aligned`` draws every shape inside one 16 px cell
(``render_scene(aligned=True)``), so one token sees it whole; ``--tower mlp`` replaces the tower
by a 2-layer per-token MLP on the same processor tokens, loss and loop. Measured side by side
(batch 8, lr 1e-3, 16 px patches, no merge, 3 minutes, the two runs sharing the 2 cores):
- Qwen2.5-VL tower, hidden 128, depth 4: shape_cell_accuracy 0.207 / 0.219 / 0.244 / 0.239
  after 250 / 500 / 750 / 1000 steps (loss 0.053, lower than the MLP's: it fits background,
  style and colour words, not shapes); depth 1, and 8 px patches merged 2 x 2, stayed at
  0.20-0.28 over 1,500-1,650 steps too;
- per-token MLP: 0.224 / 0.260 / 0.289 / 0.352 at the same steps, 0.518 at 2,000 and 0.638
  at 2,750 (2.7 min), image-level shape AUC 0.773, still rising; scikit-learn's MLP on the
  same tokens of 2,900 single-shape cells reaches 0.87 held out.
So on aligned scenes the tokens carry the shapes and a token-local model learns them in
minutes, while the native tower as configured does not (gradients reach its patch embedding,
and its output tokens are in the input's order: both checked).

Why, measured on aligned scenes, batch 8, lr 1e-3, 2 threads, 2,000 steps on a 16,000-image
pool (shape_cell_accuracy after 500 / 1,000 / 1,500 / 2,000 steps):
- not depth, learning rate or init scale: depth 0 (patch embedding and merger only) 0.22-0.26;
  depth 2 at lr 3e-3 0.22 at 1,000; depth 4 with ``--init-range`` 0.05 or 0.09 0.22 / 0.25;
- the RMSNorm that the tower applies to each 16 px patch embedding (it has no bias): a
  per-token MLP reaches .28 / .37 / .42 / .50, the same MLP with a 128-wide linear layer in
  front .25 / .26 / .31 / .38, and with RMSNorm after that layer (the tower at depth 0) only
  .26 / .25 / .28 / .27;
- the fix: small patches merged many-to-one. 4 px patches merged 4 x 4 (784 patches, the same
  49 tokens; ``--patch 4 --merge 4``), depth 1, 64 wide: .33 / .56 / .59 / .66, better than the
  per-token MLP. Each 4 px sub-patch is normalised on its own and the merger sees the 4 x 4
  silhouette on aligned scenes. (The committed bases keep 8 px patches: bases rebuilt with
  this layout answered no better, see the README.)

On the demo's own layout (not aligned), one core each, two runs side by side:
- 4 px patches merged 4 x 4, 64 wide, depth 2, ``--dense``, batch 16: image-level shape AUC
  0.556 / 0.564 / 0.571 and shape_cell_accuracy 0.242 / 0.243 / 0.272 after 4k / 8k / 12k
  images: the layout that learns aligned shapes gains nothing here within that budget;
- ``--snap 8`` (every shape's size and corner on the 8 px patch grid, so a shape always covers
  its patches the same way; the bases' tower, image-level targets, batch 32): shape AUC 0.632 /
  0.657 after 8k / 16k images against 0.633 / 0.640 unsnapped. Where a shape falls inside its
  patches is not what holds the tower back.
Steps, not images, were what the image-level runs above lacked (one core each, two runs side by
side, the bases' tower, lr 1e-3): at batch 16 on the demo's mix, shape AUC 0.63 / 0.68 / 0.75 /
0.82 / 0.87 after 8k / 32k / 48k / 72k / 84k images (22 minutes, still rising); with the easy-first
curriculum ``--easy-steps 3000 --easy 0.1`` 0.59 / 0.68 / 0.78 / 0.86 / 0.90 at the same counts,
0.93 after 100k and 0.95 after 108k (29 minutes). ``--dense`` at batch 16 stayed at 0.56-0.57
(shape_cell_accuracy 0.24-0.27) through 24k. Easy pictures alone (``--easy 1 --held-easy``, batch
8): one big plain shape 0.83 / 0.94 / 0.99 after 8k / 12k / 16k images; one medium shape
(``--easy-size medium``) 0.72 / 0.87 after 8k / 16k; three big ones (``--easy-groups 3``) 0.57 /
0.77. Nothing else moved the mix's first 8k-24k images (batch 8 or 32; 0.63 / 0.64 / 0.66 at
8k / 16k / 24k without): ``--window 32`` 0.62 / 0.64 / 0.66; ``--embed-lr 1e-4`` 0.62 at 8k;
``--hidden 192`` 0.62 (2.5x the time an image); ``--patch 4 --merge 4 --hidden 64`` with
``--window 16`` / ``32`` 0.64 / 0.65 (2.7x); ``--size 160`` (100 tokens) 0.65 (2x);
``--size-scale 1.35`` (up to the slots' limit) 0.66 / 0.67 at 8k / 16k; ``--easy 0.5`` 0.63 /
0.65 (0.72 at 28k against 0.71 without); ``--easy 0.8`` 0.62 at 8k; ``--easy-steps 2000`` (batch 8)
0.63 / 0.64 at 8k / 12k.

A linear probe of the committed tiny Qwen2.5-VL base (after its ``scene`` stage) on its frozen
image tokens (3,000 fresh scenes, 2,200 to fit): image-level shape AUC 0.68 (mean and max
pooled), the argmax shape of single-shape cells 0.29 (majority 0.24): its tokens carry colour
and background, hardly shape.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel


import make_tiny_bases as bases
from make_tiny_bases import CHECK_GENERATOR
from tokenfocus.demo import scene as S
from tokenfocus.demo.generators import generate
from tokenfocus.demo.render import render_scene

LABELS = ([("shape", s) for s in S.SHAPES] + [("color", c) for c in S.COLORS]
          + [("background", b) for b in S.BACKGROUNDS])
OUT_HIDDEN = 128


EASY = {"size": "big", "groups": 1}   # set from --easy-size and --easy-groups


def draw(rng: np.random.Generator, size: int, aligned: bool = False, snap: int = 0, easy: float = 0.0):
    if easy and rng.random() < easy:
        drawn = bases.easy_scene(rng, EASY["groups"], EASY["size"])
    else:
        drawn = generate(S.sample_scene(rng), CHECK_GENERATOR, rng)
    image = render_scene(drawn, size=size, rng=np.random.default_rng(int(rng.integers(2 ** 31))), aligned=aligned,
                         snap=snap)
    shown = bases.shown_labels(drawn)
    return image, np.array([label in shown for label in LABELS], dtype=np.float32)


WORDS = bases.region_words()
WORD_INDEX = {w: i for i, w in enumerate(WORDS)}
SHAPE_COLUMNS = [WORD_INDEX[s] for s in S.SHAPES]


def draw_dense(rng: np.random.Generator, aligned: bool):
    """A fresh scene, its per-token-cell region words (multi-hot, GRID x GRID cells), its shapes."""
    item = bases.draw_item(rng, aligned)
    cells = np.zeros((bases.GRID * bases.GRID, len(WORDS)), np.float32)
    for k, words in enumerate(item["words"]):
        cells[k, [WORD_INDEX[w] for w in words]] = 1.0
    shown = np.array([any(o.shape == s for o in item["drawn"].objects) for s in S.SHAPES], np.float32)
    return item["image"], cells, shown


def dense_scores(z: np.ndarray, held) -> dict:
    """Held-out reading of per-cell logits z (N, cells, words): the accuracy of the argmax shape on
    cells that show exactly one shape, and image-level shape AUC from the max over cells."""
    cells = np.stack([h[1] for h in held])[:, :, SHAPE_COLUMNS]
    one = cells.sum(-1) == 1
    fg = float((z[:, :, SHAPE_COLUMNS].argmax(-1) == cells.argmax(-1))[one].mean())
    img = z[:, :, SHAPE_COLUMNS].max(1)
    y = np.stack([h[2] for h in held])
    return {"shape_cell_accuracy": round(fg, 4),
            "shape": round(float(np.mean([roc_auc_score(y[:, i], img[:, i]) for i in range(len(S.SHAPES))])), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--merge", type=int, default=2)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init-range", type=float, default=0.02,
                    help="the tower's initializer_range (std of its linear weights at init)")
    ap.add_argument("--window", type=int, default=0,
                    help="the tower's window_size in px (window attention in every block but the last; 0: the image)")
    ap.add_argument("--embed-lr", type=float, default=0.0,
                    help="learning rate of the patch embedding alone (0: --lr)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", type=Path, default=Path("probe_vision.jsonl"))
    ap.add_argument("--dense", action="store_true",
                    help="per-token-cell targets (the bases' region words) instead of image-level presence")
    ap.add_argument("--aligned", action="store_true", help="render with render_scene(aligned=True)")
    ap.add_argument("--easy", type=float, default=0.0,
                    help="share of training scenes drawn easy (make_tiny_bases.easy_scene: --easy-groups plain shapes of "
                         "--easy-size, one of each, no style, no generator error); held-out scenes only with --held-easy")
    ap.add_argument("--easy-steps", type=int, default=0,
                    help="curriculum: the share of easy scenes falls linearly from 1 to --easy over this many steps")
    ap.add_argument("--size-scale", type=float, default=1.0,
                    help="multiply the renderer's SIZE_FRACTION (shapes' size as a fraction of the image)")
    ap.add_argument("--easy-size", choices=S.SIZES, default="big")
    ap.add_argument("--easy-groups", type=int, default=1)
    ap.add_argument("--held-easy", action="store_true", help="held-out scenes drawn easy too")
    ap.add_argument("--snap", type=int, default=0, help="render with render_scene(snap=N): shapes on an N px grid")
    ap.add_argument("--tower", choices=("qwen", "mlp"), default="qwen",
                    help="mlp: a 2-layer per-token MLP on the processor's patch tokens instead of the tower")
    a = ap.parse_args(argv)
    if a.dense and (a.easy or a.easy_steps or a.held_easy):
        ap.error("the easy scenes (--easy, --easy-steps, --held-easy) are image-level: not with --dense")
    if a.embed_lr and a.tower == "mlp":
        ap.error("--embed-lr sets the tower's patch embedding: not with --tower mlp")
    torch.set_num_threads(a.threads)
    EASY.update(size=a.easy_size, groups=a.easy_groups)
    if a.size_scale != 1.0:
        from tokenfocus.demo import render
        render.SIZE_FRACTION.update({k: v * a.size_scale for k, v in render.SIZE_FRACTION.items()})
    torch.manual_seed(0)
    vc = Qwen2_5_VLConfig(vision_config=dict(
        depth=a.depth, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_heads=4, in_channels=3,
        patch_size=a.patch, spatial_merge_size=a.merge, temporal_patch_size=2, window_size=a.window or a.size,
        out_hidden_size=OUT_HIDDEN, fullatt_block_indexes=[a.depth - 1],
        initializer_range=a.init_range)).vision_config
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vc)
    if a.tower == "mlp":
        tower = torch.nn.Sequential(torch.nn.Linear(3 * 2 * a.patch * a.patch, 2 * OUT_HIDDEN), torch.nn.GELU(),
                                    torch.nn.Linear(2 * OUT_HIDDEN, OUT_HIDDEN))
    if a.dense and (a.size // a.patch // a.merge) != bases.GRID:
        ap.error(f"--dense needs {bases.GRID} x {bases.GRID} tokens (size / patch / merge)")
    head = torch.nn.Linear(OUT_HIDDEN if a.dense else 2 * OUT_HIDDEN, len(WORDS) if a.dense else len(LABELS))
    pixels = a.size * a.size
    processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=a.patch,
                                         merge_size=a.merge, temporal_patch_size=2)
    params = list(tower.parameters()) + list(head.parameters())
    embed = [p for n, p in tower.named_parameters() if n.startswith("patch_embed")] if a.embed_lr else []
    rest = [p for p in params if all(p is not e for e in embed)]
    groups = [{"params": rest, "peak": a.lr}] + ([{"params": embed, "peak": a.embed_lr}] if embed else [])
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.01)

    def logits(images):
        x = processor(images=images, return_tensors="pt")
        out = tower(x["pixel_values"]) if a.tower == "mlp" else tower(x["pixel_values"], grid_thw=x["image_grid_thw"])
        f = (out.pooler_output if hasattr(out, "pooler_output") else out).reshape(len(images), -1, OUT_HIDDEN)
        return head(f) if a.dense else head(torch.cat([f.mean(1), f.max(1).values], -1))

    sample = (lambda r: draw_dense(r, a.aligned)) if a.dense else (lambda r: draw(r, a.size, a.aligned, a.snap))

    def train_sample(r):   # --dense never has easy scenes (refused above)
        share = bases.easy_share(step, a.easy_steps, a.easy)
        return draw(r, a.size, a.aligned, a.snap, share) if share else sample(r)
    held_rng = np.random.default_rng(999)
    held_sample = (lambda r: draw(r, a.size, a.aligned, a.snap, 1.0)) if a.held_easy else sample
    held = [held_sample(held_rng) for _ in range(800)]
    y_held = np.stack([h[1] for h in held])

    def evaluate() -> dict:
        tower.eval()
        with torch.no_grad():
            z = torch.cat([logits([h[0] for h in held[i:i + 100]]) for i in range(0, len(held), 100)]).numpy()
        tower.train()
        if a.dense:
            return dense_scores(z, held)
        return {kind: round(float(np.mean([roc_auc_score(y_held[:, i], z[:, i]) for i, l in enumerate(LABELS)
                                           if l[0] == kind])), 4) for kind in ("shape", "color", "background")}

    print(json.dumps({"params": sum(p.numel() for p in params), **vars(a)}, default=str), flush=True)
    rng, step, losses, t0 = np.random.default_rng(1), 0, [], time.time()
    with open(a.log, "a", encoding="utf-8") as log:
        while time.time() - t0 < a.minutes * 60:
            batch = [train_sample(rng) for _ in range(a.batch)]
            for g in opt.param_groups:
                g["lr"] = g["peak"] * min(1.0, (step + 1) / 200)
            loss = F.binary_cross_entropy_with_logits(logits([b[0] for b in batch]),
                                                      torch.tensor(np.stack([b[1] for b in batch])))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 250 == 0:
                line = {"step": step, "images": step * a.batch, "minutes": round((time.time() - t0) / 60, 1),
                        "loss": round(float(np.mean(losses[-250:])), 4), **evaluate()}
                print(json.dumps(line), flush=True)
                log.write(json.dumps(line) + "\n")
                log.flush()


if __name__ == "__main__":
    main()
