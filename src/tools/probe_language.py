#!/usr/bin/env python
"""How fast can the tiny bases' language model learn generic visual QA when it sees ideal image tokens? A probe.

The vision tower is replaced by an oracle: each of the 49 image tokens is the sum of the input
embeddings of its cell's region words (``make_tiny_bases.DenseTargets``: the colour, shape and
texture of what covers the cell, the background, the style, a marker on each shape's centre),
which is what the bases' dense pre-training asks the projector to produce. Everything else is the
base's own path: its chat template, ``encode``, the native model's forward with the features put in
place of the image tokens, and the generic questions of ``make_tiny_bases`` on freshly drawn scenes.
Held-out accuracy per question type is appended as JSON lines to ``--log`` every ``--eval-every``
steps. So the language model's share of the problem is measured apart from the vision tower's.

    python src/tools/probe_language.py --minutes 25 --log probe_language.jsonl
    python src/tools/probe_language.py --captions 8 --checklists 16 --minutes 30
    python src/tools/probe_language.py --init input/pretrained/tiny-qwen2.5-vl --types shape,color
    python src/tools/probe_language.py --scene-words 0.5 --types shape,color,color_shape,texture,style,color_of

Auxiliary generic tasks, each a whole answer under next-token loss (more supervised tokens per
scene than one first answer token): ``--captions N`` adds N scenes a step described in order
("From left to right: two red striped hearts, one purple star. Background: city."), and
``--checklists N`` adds N checklists ("Which of these does the image show? heart, red, star" ->
"heart Yes, red No, star Yes"), where each Yes/No follows its own word.

Measured on one core of the 2-core machine (two runs side by side; the fresh tiny Qwen2.5-VL
language model, 4 layers, 128 wide; batch 32, lr 1e-3, all ten question types; held-out accuracy,
100 questions a type), after 250 / 500 / 750 / 1000 / 1250 steps (23 minutes):
- plain: background 1.0 from step 250; colour of a named shape 0.12 / 0.12 / 0.43 / 0.69 / 0.73;
  caption matching 0.68-0.74 (majority about 0.53); shape presence 0.45 / 0.56 / 0.55 / 0.49 /
  0.60, colour, colour-shape, texture, style presence, count and relation at or near their
  majority rates throughout;
- ``--captions 8 --checklists 16`` (1.8x the step time): 750 steps in the same 25 minutes,
  colour of 0.12 / 0.68 / 0.76, caption matching 0.76, every presence type at its majority rate.
The copy answers are learned within minutes, the yes/no presence answers (noticing that nothing
matches the asked word) are not.

Longer, on presence (one core each, two runs side by side, batch 32, lr 1e-3; 100 held-out
questions a type), after 1000 / 2000 / 3000 / 4000 steps and at the end:
- cell words only, types shape, colour, colour-shape, texture, style (55 minutes, 5500 steps):
  style 0.94 at 1000 steps, 0.98 from 2250 on (the style word is in every cell); shape 0.44 / 0.44 /
  0.56 / 0.70, 0.59 at 5500 (0.44 and 0.56 are the two constant answers); colour, colour-shape and
  texture at their majority rates throughout; loss 0.54 -> 0.50;
- ``--scene-words 0.5`` (every cell also carries half of the whole scene's words, as a token of a
  bidirectional vision tower can) with ``color_of`` added to the same types (40 minutes, 4250
  steps): a plateau, then presence learned: colour 0.53 / 0.87 / 0.98 / 1.0, 1.0; texture 0.75
  (majority) / 0.71 / 0.92 / 0.99, 0.85; shape 0.46 / 0.59 / 0.66 / 0.81, 0.87; colour-shape binding
  0.52 / 0.68 / 0.73 / 0.85, 0.89; colour of a named shape 0.67-0.97; loss 0.59 / 0.50 / 0.32 /
  0.22, 0.20, still falling when the run ended. (Two changes at once: which one did it is not
  separated.)
- width 256 (8 heads), cell words only: shape, colour, colour-shape at their majority rates after
  750 steps (stopped; 2.2x the step time).
So yes/no presence is learnable by this language model in about 3000-4000 steps when every image
token also carries the scene's words (a summary it can average over, instead of a sharp match to
find among 49 tokens) and a copy question trains the look-up; from cell words alone it was not
within 5500 steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_bases as bases  # noqa: E402
from tokenfocus.demo import scene as S  # noqa: E402
from tokenfocus.lvlm import load_adapter  # noqa: E402

CAPTION_QUESTION = "Describe the image."
CHECKLIST_QUESTION = "Which of these does the image show?"


def caption(drawn) -> str:
    """The drawn scene in layout order: counts, colours, textures, shapes; background; style."""
    parts = []
    for o in drawn.objects:
        n = min(o.count, S.MAX_RENDERED_COUNT)
        texture = "" if o.texture == "plain" else o.texture + " "
        parts.append(f"{S.COUNT_WORDS[n]} {S.shown_color(o)} {texture}{S.PLURAL[o.shape] if n > 1 else o.shape}")
    order = "From left to right" if drawn.layout == "row" else "From top to bottom"
    style = "" if drawn.style == "none" else f" Style: {drawn.style}."
    return f"{order}: {', '.join(parts)}. Background: {drawn.background}.{style}"


def checklist(drawn, rng: np.random.Generator, n: int = 6) -> tuple[str, str]:
    """Up to ``n`` words (shapes, colours, textures, styles, backgrounds), about half of them shown,
    and the answer ``word Yes, word No, ...``."""
    pools = [(S.SHAPES, {o.shape for o in drawn.objects}),
             (tuple(S.COLORS), {S.shown_color(o) for o in drawn.objects}),
             (bases.TEXTURE_WORDS, {o.texture for o in drawn.objects}),
             (bases.STYLE_WORDS, {drawn.style}), (tuple(S.BACKGROUNDS), {drawn.background})]
    words: dict[str, bool] = {}
    for _ in range(n):
        pool, shown = pools[int(rng.choice(len(pools), p=[0.35, 0.35, 0.1, 0.1, 0.1]))]
        present = sorted(shown & set(pool))
        absent = [w for w in pool if w not in shown]
        word = str(bases.present_or_absent(rng, present, absent))
        words.setdefault(word, word in shown)
    return (f"{CHECKLIST_QUESTION} {', '.join(words)}",
            ", ".join(f"{w} {'Yes' if y else 'No'}" for w, y in words.items()))


class Oracle:
    """Puts the ideal cell vectors of the current items in place of the vision tower's output."""

    def __init__(self, adapter, scene_words: float = 0.0):
        self.adapter, self.items, self.scene_words = adapter, [], scene_words
        self.dense = bases.DenseTargets(adapter)
        self.embed = adapter.model.get_input_embeddings()
        adapter.model.model.get_image_features = self._features

    def vectors(self, items) -> torch.Tensor:
        target = self.dense.target(items)
        if self.scene_words:
            # Every cell also carries the words of the whole scene (what any cell shows), scaled.
            target = target + self.scene_words * target.amax(dim=1, keepdim=True)
        return target @ self.embed.weight[self.dense.ids]   # (B, cells, hidden)

    def _features(self, *args, **kwargs):
        v = self.vectors(self.items)
        return BaseModelOutputWithPooling(pooler_output=tuple(v) if self.adapter.family == "qwen2_5_vl" else v)


def sequence_loss(adapter, oracle: Oracle, items, questions, answers) -> torch.Tensor:
    """Next-token cross-entropy over whole answers."""
    oracle.items = items
    batch = adapter.prepare(adapter.encode([it["image"] for it in items], questions, answers=answers))
    labels = batch.pop("labels")
    logits = adapter.model(**batch, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def fresh_base(family: str, out: Path, seed: int) -> Path:
    """A random-init base exactly as make_tiny_bases builds it (tokenizer included)."""
    if not (out / "config.json").exists():
        torch.manual_seed(seed)
        tok = bases.train_tokenizer(bases.build_corpus(seed), family)
        model, image_processor, processor_config = bases.BUILDERS[family](tok)
        bases.save_checkpoint(out, model, tok, image_processor, processor_config)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(bases.FAMILIES), default="qwen2_5_vl")
    ap.add_argument("--init", type=Path, help="start from this checkpoint (default: a fresh random init)")
    ap.add_argument("--work", type=Path, default=Path("output/probe_language"), help="where a fresh init is kept")
    ap.add_argument("--types", default=",".join(bases.QUESTION_TYPES), help="question types trained, comma-separated")
    ap.add_argument("--captions", type=int, default=0, help="caption answers per step")
    ap.add_argument("--checklists", type=int, default=0, help="checklist answers per step")
    ap.add_argument("--text-hidden", type=int, default=bases.TEXT["hidden_size"],
                    help="width of a fresh language model (its MLP 3x, its heads 32 wide)")
    ap.add_argument("--text-layers", type=int, default=bases.TEXT["num_hidden_layers"])
    ap.add_argument("--scene-words", type=float, default=0.0,
                    help="add this multiple of the whole scene's words to every cell's oracle vector")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-per-type", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", type=Path, default=Path("probe_language.jsonl"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    types = a.types.split(",")
    unknown = sorted(set(types) - set(bases.QUESTION_TYPES))
    if unknown:
        ap.error(f"--types: unknown {unknown}; known: {list(bases.QUESTION_TYPES)}")
    if a.text_hidden % 32:
        ap.error(f"--text-hidden {a.text_hidden}: a multiple of 32 (heads are 32 wide)")
    if a.init is None and (a.text_hidden, a.text_layers) != (bases.TEXT["hidden_size"], bases.TEXT["num_hidden_layers"]):
        heads = a.text_hidden // 32
        bases.TEXT.update(hidden_size=a.text_hidden, intermediate_size=3 * a.text_hidden,
                          num_hidden_layers=a.text_layers, num_attention_heads=heads,
                          num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
                          initializer_range=0.55 / a.text_hidden ** 0.5)
        a.work = a.work / f"text{a.text_hidden}x{a.text_layers}"
    path = a.init or fresh_base(a.family, a.work / f"init_{a.family}", a.seed)
    adapter = load_adapter(a.family, str(path))
    oracle = Oracle(adapter, a.scene_words)
    answers = sorted({x for t in bases.QUESTION_TYPES for x in bases.answer_set(t)})
    answer_token = dict(zip(answers, adapter.label_ids(answers)))
    held_rng = np.random.default_rng([a.seed, 2])
    held = []
    for t in bases.QUESTION_TYPES:
        for _ in range(a.eval_per_type):
            item = bases.draw_item(held_rng)
            held.append((item, *bases.generic_question(item, held_rng, t), t))

    def evaluate() -> dict:
        adapter.model.eval()
        hits: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(held), 50):
                chunk = held[i:i + 50]
                oracle.items = [c[0] for c in chunk]
                logits = adapter.last_logits(adapter.encode([c[0]["image"] for c in chunk], [c[1] for c in chunk]))
                for row, (_, _, answer, t) in zip(logits, chunk):
                    choices = bases.answer_set(t)
                    hits.setdefault(t, []).append(choices[int(row[adapter.label_ids(choices)].argmax())] == answer)
        adapter.model.train()
        return {t: round(float(np.mean(h)), 3) for t, h in hits.items()}

    opt = torch.optim.AdamW(adapter.model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    adapter.model.train()
    print(json.dumps({**{k: str(v) for k, v in vars(a).items()}, "init": str(path)}), flush=True)
    step, losses, t0 = 0, [], time.time()
    with open(a.log, "a", encoding="utf-8") as log:
        while time.time() - t0 < a.minutes * 60:
            rng = np.random.default_rng([a.seed, 1, step])
            items = [bases.draw_item(rng) for _ in range(max(a.batch, a.captions, a.checklists))]
            qa = [bases.generic_question(it, rng, str(t)) for it, t in zip(items, rng.choice(types, size=a.batch))]
            oracle.items = items[:a.batch]
            batch = adapter.prepare(adapter.encode([it["image"] for it in items[:a.batch]], [q for q, _ in qa]))
            logits = adapter.model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1].float()
            loss = F.cross_entropy(logits, torch.tensor([answer_token[x] for _, x in qa]))
            if a.captions:
                some = items[:a.captions]
                loss = loss + sequence_loss(adapter, oracle, some, [CAPTION_QUESTION] * len(some),
                                            [caption(it["drawn"]) for it in some])
            if a.checklists:
                some = items[-a.checklists:]
                pairs = [checklist(it["drawn"], rng) for it in some]
                loss = loss + sequence_loss(adapter, oracle, some, [q for q, _ in pairs], [x for _, x in pairs])
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1.0, (step + 1) / 100)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % a.eval_every == 0:
                line = {"step": step, "minutes": round((time.time() - t0) / 60, 1),
                        "loss": round(float(np.mean(losses[-a.eval_every:])), 3), **evaluate()}
                print(json.dumps(line), flush=True)
                log.write(json.dumps(line) + "\n")
                log.flush()


if __name__ == "__main__":
    main()
