"""Build the tiny pretrained Qwen2.5-VL and InternVL bases of the demo.

    python src/tools/make_tiny_bases.py --out input/pretrained --seed 1234
    # or both families at once, one core each (same result):
    python src/tools/make_tiny_bases.py --family internvl & python src/tools/make_tiny_bases.py --family qwen2_5_vl

For each family: a byte-level BPE tokenizer trained on demo-style text (any text encodes;
digits are single tokens; the family's chat special tokens), a random-init model of the real
architecture at about 1.5M parameters, an image processor at 112 px in 8 px patches (49 image
tokens), a chat template; then pre-training (``STAGES``) on freshly rendered scenes that a
generic simulated generator drew (not one of the demo's twelve), answered from each drawn
scene's truth, never from the demo's annotators and never with the fine-tune's scoring
questions:

1. ``vision``: the vision tower and projector alone on dense cell targets (``DenseTargets``);
2. ``generic``, ``presence``, ``generic+``: the whole model on generic visual questions (is
   there a star, what colour is the heart, how many squares, is the circle left of the star,
   what is the background, ``Does the image show "<text>"?`` for whole and partial captions),
   with the dense loss kept on;
3. stage ``scene`` (``SCENE_PHASES``, a fresh optimiser from stage 1's weights): the dense
   targets add the scene's words to every cell, then presence-weighted and full generic mixes;
4. stage ``caption`` (``CAPTION_PHASES``, a fresh optimiser from stage 2's weights): mostly
   VQAScore's own question about one word of a prompt (``word_caption``: ``Does the image show
   "red"?``, "desert", "stars", "two", ...), then the full mix;
5. stage ``shapes`` (``SHAPE_PHASES``): the tower on an image-level presence loss as well
   (``Stage.presence``: a ``PresenceHead``, a training aid that is not saved), its vision phase
   starting on easy pictures (``Stage.easy_steps``: ``easy_scene``s, their share falling to
   ``Stage.easy_floor``), then questions weighted to shapes;
6. stage ``reading`` (``READ_PHASES``): long drilling of the presence questions (a language
   model reads a yes/no presence answer from its image tokens only after a plateau of a few
   thousand steps), then the full mix;
7. stage ``instruct`` (``INSTRUCT_PHASES``): answer formats, as an instruction-tuned LVLM knows
   them: yes/no questions answered ``1`` / ``0`` under a generic instruction (``digit``), counts
   of any shape, ``0`` for an absent one (``count0``), 1-5 rating scales (``rate``: how much of a
   caption the image shows, by the drawn scene's truth; how many shapes or colours), the rest of
   the mix kept.

Every step draws new scenes (a fixed pool is memorised). Work in progress is checkpointed in
``<out>/.work/<family>/`` every 250 steps and resumed from there, so a killed run continues
where it stopped and ends at the same weights; a finished stage is kept there too and a re-run
continues from it. ``--from-published`` continues from the published base in ``--out``
instead: the stages its card records are not redone (how a stage added later is trained on
top of the committed base). Saved with save_pretrained (safetensors) so that
they load exactly like real checkpoints: ``load_adapter('qwen2_5_vl', 'input/pretrained/tiny-qwen2.5-vl')``.
A ``card.json`` beside each checkpoint records the seed, sizes, time, and after every phase the
held-out accuracy per question type (beside the majority rate) and the VQAScore zero-shot
reading. Same seed, same checkpoints (on the same torch build and thread count).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                          PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2VLImageProcessorPil)


from tokenfocus import prompts
from tokenfocus.data import split_element_key
from tokenfocus.metrics import srcc
from tokenfocus.demo import prompt as demo_prompt
from tokenfocus.demo import scene as demo_scene
from tokenfocus.demo.annotators import TRUTH_THRESHOLD, truth_total
from tokenfocus.demo.generators import GENERATOR_NAMES, Generator, generate
from tokenfocus.demo.render import object_rgb, render_scene
from tokenfocus.demo.scene import shown_color
from tokenfocus.io import atomic_dir, atomic_path
from tokenfocus.lvlm import load_adapter

IMAGE_SIZE = 112
PATCH = 8                      # 14 x 14 patches, merged 2 x 2 into 7 x 7 = 49 image tokens
GRID = IMAGE_SIZE // (2 * PATCH)
FAMILIES = {"qwen2_5_vl": "tiny-qwen2.5-vl", "internvl": "tiny-internvl"}

# Qwen2's pre-tokenizer split: digits one by one, words with their leading space.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB_SIZE = 1024

SPECIAL_TOKENS = {
    "qwen2_5_vl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|image_pad|>", "<|video_pad|>"],
    "internvl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
}

# The two families' chat formats, as their real checkpoints render one image + text.
CHAT_TEMPLATES = {
    "qwen2_5_vl": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "internvl": (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}

# Model sizes. The init scale follows 0.55/sqrt(hidden) (GPT-2's 0.02 at 768 wide): at 0.02 a
# 128-wide model never learned to look up a question word in its context within our budget.
# The vision tower sees 8 px patches: at 14 px (16 image tokens) a 64-wide, 2-layer tower learned
# colour but not shape (held-out shape presence at the majority rate).
TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6, initializer_range=0.05)
VISION_HIDDEN, VISION_LAYERS, VISION_HEADS = 96, 4, 4

# Generator names for the tokenizer corpus (public T2I model names, as EvalMuse keys them).
T2I_NAMES = ("SDXL-Turbo", "SDXL", "SD_v1.5", "SD_v2.1", "SD3", "DALLE3", "Midjourney", "PixArt-Sigma",
             "Playground2.5", "Kandinsky3", "HunyuanDiT", "Kolors", "LCM-SDXL", "Flux", "Lumina", "CogView3",
             "DeepFloyd-IF", "Dreamlike", "Openjourney", "Wuerstchen")
GENERIC_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "A picture is worth a thousand words.",
    "Describe the image in one sentence.",
    "Answer the question about the image with a single word.",
    "There are 0 1 2 3 4 5 6 7 8 9 objects.",
    "What is shown in this picture? It shows shapes on a background.",
    "Yes, it is. No, it is not. I am not sure.",
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
)

# ---------------------------------------------------------------------------------- questions

COLOR_NAMES = tuple(demo_scene.COLORS)
SHAPES = demo_scene.SHAPES
PLURAL = demo_scene.PLURAL
TEXTURE_WORDS = tuple(t for t in demo_scene.TEXTURES if t != "plain")
STYLE_WORDS = tuple(s for s in demo_scene.STYLES if s != "none")
# Generic visual questions (what a pre-trained LVLM has been taught); never the scoring
# questions of the fine-tune, never an annotator's label.
QUESTION_TYPES = ("shape", "color", "color_shape", "count", "color_of", "relation", "background",
                  "texture", "style", "caption", "word", "digit", "count0", "rate")
# The types whose questions the tokenizer's corpus holds (its training text is fixed by its seed:
# "word" asks nothing in words these types do not already use).
CORPUS_TYPES = QUESTION_TYPES[:10]
# A bare-word caption asks about one kind of word, as an element's text reads in a prompt.
WORD_KINDS = ("shape", "color", "texture", "style", "background", "size", "count")
RELATION_WORDS = {"left of": "left of", "right of": "right of", "above": "above", "below": "below"}


def answer_set(qtype: str) -> tuple[str, ...]:
    """The candidate answers of a question type (the accuracy is an argmax among them)."""
    if qtype == "digit":
        return DIGIT_ANSWERS
    if qtype == "count0":
        return tuple(str(i) for i in range(demo_scene.MAX_RENDERED_COUNT + 1))
    if qtype == "rate":
        return RATE_ANSWERS
    if qtype == "count":
        return tuple(str(i) for i in range(1, demo_scene.MAX_RENDERED_COUNT + 1))
    if qtype == "color_of":
        return COLOR_NAMES
    if qtype == "background":
        return demo_scene.BACKGROUNDS
    return ("Yes", "No")


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def present_or_absent(rng: np.random.Generator, present, absent):
    """One of ``present`` or of ``absent`` with equal chance where both exist (one draw for the
    side, one for the item): the balanced choice of every presence question."""
    return rng.choice(present if present and (rng.random() < 0.5 or not absent) else absent)


# Instruction following, as instruction-tuned LVLMs have learned it: a yes/no question asked with
# an answer format of digits ("digit"), "how many" of any shape, absent ones included ("count0"),
# and a 1-5 rating scale ("rate"). The wording is generic, not the fine-tune's scoring instructions.
YES_NO_TYPES = ("shape", "color", "color_shape", "texture", "style", "relation", "word", "caption")
DIGIT_INSTRUCTIONS = ("Answer 1 for yes or 0 for no, with one digit.",
                      "Reply with one digit: 1 if yes, 0 if no.")
DIGIT_ANSWERS = ("1", "0")


def digit_question(item: dict, rng: np.random.Generator) -> tuple[str, str]:
    """A yes/no question of a random ``YES_NO_TYPES`` type, the instruction before it (as the
    scoring questions place theirs), answered ``1`` for yes and ``0`` for no."""
    q, a = generic_question(item, rng, str(rng.choice(YES_NO_TYPES)))
    instruction = DIGIT_INSTRUCTIONS[int(rng.integers(len(DIGIT_INSTRUCTIONS)))]
    return f"{instruction}\n{q}", "1" if a == "Yes" else "0"


RATE_ANSWERS = ("1", "2", "3", "4", "5")
RATE_QUESTIONS = {
    "shapes": "How many shapes does the image show? Rate from 1 (one) to 5 (five or more). Answer with one digit.",
    "colours": "How many colours do the shapes show? Rate from 1 (one) to 5 (five or more). Answer with one digit.",
    "caption": "How much of the caption does the image show? Rate from 1 (none of it) to 5 (all of it). "
               "Answer with one digit.",
}


def rate_question(item: dict, rng: np.random.Generator) -> tuple[str, str]:
    """A generic question on a 1-5 rating scale (``RATE_QUESTIONS``): half the time how much of a
    caption (the scene's prompt) the image shows, ``1 + 4 x`` the share of its elements the drawn
    scene shows (clarity >= 0.5, every element counted once), rounded, the caption question after
    the instruction; otherwise how many shapes the image shows or how many colours they show,
    five or more answered 5."""
    u = rng.random()
    if u < 0.5:
        els = item["prompt"].elements
        share = float(np.mean([e.clarity(item["drawn"]) >= TRUTH_THRESHOLD for e in els]))
        question = f"{RATE_QUESTIONS['caption']}\n{prompts.vqascore_question(item['prompt'].text)}"
        return question, str(1 + int(np.floor(4 * share + 0.5)))
    what = "shapes" if u < 0.75 else "colours"
    objs = item["drawn"].objects
    n = sum(o.count for o in objs) if what == "shapes" else len({shown_color(o) for o in objs})
    return RATE_QUESTIONS[what], str(min(max(n, 1), 5))


def count_any_question(item: dict, rng: np.random.Generator) -> tuple[str, str]:
    """``How many <shapes> are there? Answer with one digit.`` about a shape drawn or not (half
    each where both exist), answered with the count, ``0`` for an absent shape."""
    objs = item["drawn"].objects
    present = sorted({o.shape for o in objs})
    absent = [s for s in SHAPES if s not in present]
    shape = str(present_or_absent(rng, present, absent))
    count = sum(o.count for o in objs if o.shape == shape)
    return f"How many {PLURAL[shape]} are there? Answer with one digit.", str(min(count, demo_scene.MAX_RENDERED_COUNT))


def partial_caption(prompt, drawn, rng: np.random.Generator) -> tuple[str, bool]:
    """A part of a prompt as a caption, and whether the drawn scene shows it.

    Half the time the element's own text (``red``, ``circle``, ``two``), read as a generic
    viewer reads a bare word: something red, some circle, some group of two; otherwise the
    element as a phrase bound to its shape (``a red circle``), judged by the element's clarity.
    """
    e = prompt.elements[int(rng.integers(len(prompt.elements)))]
    text = split_element_key(e.key)[0]
    objs = drawn.objects
    if e.kind != "spatial" and rng.random() < 0.5:
        truth = {"object": lambda: any(o.shape == e.shape for o in objs),
                 "color": lambda: any(shown_color(o) == e.value for o in objs),
                 "count": lambda: any(o.count == e.count for o in objs),
                 "size": lambda: any(o.size == e.value for o in objs),
                 "texture": lambda: any(o.texture == e.value for o in objs),
                 "location": lambda: drawn.background == e.value,
                 "style": lambda: drawn.style == e.value}[e.kind]()
        return text, bool(truth)
    if e.kind == "object":
        phrase = f"a {e.shape}"
    elif e.kind == "count":
        phrase = f"{demo_scene.COUNT_WORDS[e.count]} {PLURAL[e.shape] if e.count > 1 else e.shape}"
    elif e.kind == "spatial":
        phrase = f"a {e.shape} {demo_scene.RELATION_PHRASES[e.value]} a {e.other}"
    elif e.kind in ("color", "size", "texture"):
        phrase = f"a {e.value} {e.shape}"
    else:
        phrase = text
    return phrase, bool(e.clarity(drawn) >= TRUTH_THRESHOLD)


def whole_caption_shown(prompt, drawn) -> bool:
    """A whole prompt matches the image when every one of its elements is shown."""
    return all(e.clarity(drawn) >= TRUTH_THRESHOLD for e in prompt.elements)


def word_caption(scene, rng: np.random.Generator) -> tuple[str, str]:
    """``Does the image show "<word>"?`` for one word of a random kind (``WORD_KINDS``: a shape,
    singular or plural, a colour, a texture, a style, a background, a size, a count word), shown or
    not with equal chance where the kind allows; the answer is the drawn scene's truth (some
    shape / group / the background has it)."""
    objs = scene.objects
    kind = str(rng.choice(WORD_KINDS))
    shown = {"shape": {o.shape for o in objs}, "color": {shown_color(o) for o in objs},
             "texture": {o.texture for o in objs} - {"plain"},
             "style": {scene.style} - {"none"}, "background": {scene.background},
             "size": {o.size for o in objs}, "count": {min(o.count, demo_scene.MAX_RENDERED_COUNT) for o in objs}}[kind]
    every = {"shape": SHAPES, "color": COLOR_NAMES, "texture": TEXTURE_WORDS, "style": STYLE_WORDS,
             "background": tuple(demo_scene.BACKGROUNDS), "size": tuple(demo_scene.SIZES),
             "count": tuple(range(1, demo_scene.MAX_RENDERED_COUNT + 1))}[kind]
    absent = [w for w in every if w not in shown]
    present = sorted(shown, key=str)
    value = present_or_absent(rng, present, absent)
    value = value.item() if hasattr(value, "item") else value
    if kind == "shape":
        word = PLURAL[value] if rng.random() < 0.5 else value
    elif kind == "count":
        word = demo_scene.COUNT_WORDS[value]
    else:
        word = str(value)
    return prompts.vqascore_question(word), _yes(value in shown)


def generic_question(item: dict, rng: np.random.Generator, qtype: str) -> tuple[str, str]:
    """(question, answer) of type `qtype` about the drawn scene of `item` (see ``draw_item``);
    balanced Yes/No where the type allows."""
    scene = item["drawn"]
    objs = scene.objects
    present_shapes = {o.shape for o in objs}
    present_colors = {shown_color(o) for o in objs}
    if qtype == "relation" and len(objs) < 2:
        qtype = "color_shape"
    if qtype == "shape":
        shape = str(rng.choice(sorted(present_shapes) if rng.random() < 0.5 else
                               [s for s in SHAPES if s not in present_shapes] or SHAPES))
        return f"Is there a {shape}?", _yes(shape in present_shapes)
    if qtype == "color":
        color = str(rng.choice(sorted(present_colors) if rng.random() < 0.5 else
                               [c for c in COLOR_NAMES if c not in present_colors]))
        return f"Is there anything {color}?", _yes(color in present_colors)
    if qtype == "color_shape":
        pairs = {(shown_color(o), o.shape) for o in objs}
        if rng.random() < 0.5:
            color, shape = sorted(pairs)[int(rng.integers(len(pairs)))]
        else:
            # Hard negatives: a present shape in another colour, or a present colour on another shape.
            o = objs[int(rng.integers(len(objs)))]
            if rng.random() < 0.5:
                color, shape = str(rng.choice([c for c in COLOR_NAMES if c != shown_color(o)])), o.shape
            else:
                color, shape = shown_color(o), str(rng.choice([s for s in SHAPES if s != o.shape]))
        return f"Is there a {color} {shape}?", _yes((color, shape) in pairs)
    if qtype == "count":
        shape = str(rng.choice(sorted(present_shapes)))
        count = sum(o.count for o in objs if o.shape == shape)
        return f"How many {PLURAL[shape]} are there?", str(min(count, demo_scene.MAX_RENDERED_COUNT))
    if qtype == "color_of":
        o = objs[int(rng.integers(len(objs)))]
        return f"What colour is the {o.shape}?", shown_color(o)
    if qtype == "background":
        return "What is the background?", scene.background
    if qtype == "texture":
        present = {o.texture for o in objs} - {"plain"}
        absent = [t for t in TEXTURE_WORDS if t not in present]
        texture = str(present_or_absent(rng, sorted(present), absent))
        return f"Is there anything {texture}?", _yes(texture in present)
    if qtype == "style":
        style = scene.style if scene.style != "none" and rng.random() < 0.5 else \
            str(rng.choice([s for s in STYLE_WORDS if s != scene.style]))
        return f"Is the image in the style {style}?", _yes(scene.style == style)
    if qtype == "relation":
        i, j = (int(k) for k in rng.choice(len(objs), 2, replace=False))
        relation = str(rng.choice(demo_scene.RELATIONS[scene.layout]))
        holds = demo_scene.relation_holds(scene, i, relation, j)
        return f"Is the {objs[i].shape} {RELATION_WORDS[relation]} the {objs[j].shape}?", _yes(holds)
    if qtype == "word":
        return word_caption(scene, rng)
    if qtype == "digit":
        return digit_question(item, rng)
    if qtype == "count0":
        return count_any_question(item, rng)
    if qtype == "rate":
        return rate_question(item, rng)
    if qtype == "caption":
        if rng.random() < 0.4:
            return prompts.vqascore_question(item["prompt"].text), _yes(whole_caption_shown(item["prompt"], scene))
        text, shown = partial_caption(item["prompt"], scene, rng)
        return prompts.vqascore_question(text), _yes(shown)
    raise ValueError(f"unknown question type {qtype!r}")


# A generic simulated generator for the scenes of pre-training: every failure at a similar, high
# rate, so that captions are often only partly shown. It is not one of the demo's twelve generators
# (whose profiles the fine-tune is meant to find out), and answers come from the drawn scene's
# truth (an element is shown when its clarity is >= 0.5), never from the demo's annotators.
CHECK_GENERATOR = Generator("pretrain-generic", drop_object=0.2, shape_swap=0.1, color_wrong=0.2, color_bind=0.25,
                            color_near=0.05, count_error=0.25, spatial_error=0.3, size_error=0.25,
                            texture_error=0.25, background_error=0.3, style_error=0.3, partial=0.03,
                            distortion=0.03, extra_object=0.1)


def easy_scene(rng: np.random.Generator, groups: int = 1, size: str = "big") -> "demo_scene.Scene":
    """The easiest pictures of the grammar, where a curriculum starts: ``groups`` groups of one
    plain shape each, of ``size``, distinct shapes and colours, no style (a random background)."""
    scene = demo_scene.sample_scene(rng)
    shapes = rng.choice(len(SHAPES), groups, replace=False)
    colors = rng.choice(len(COLOR_NAMES), groups, replace=False)
    scene.objects = [demo_scene.SceneObject(SHAPES[i], COLOR_NAMES[c], 1, size, "plain") for i, c in zip(shapes, colors)]
    scene.style, scene.relations = "none", []
    return scene


def easy_share(step: int, steps: int, floor: float) -> float:
    """The easy-first curriculum: the share of ``easy_scene``s at ``step``, falling linearly from 1
    to ``floor`` over ``steps`` steps (``steps`` 0: ``floor`` throughout)."""
    return max(floor, 1.0 - step / steps) if steps else floor


def draw_item(rng: np.random.Generator, aligned: bool = False, easy: bool = False) -> dict:
    """A fresh pre-training scene: intended scene and prompt, the generic generator's drawing,
    its image and the words of each image-token cell. ``easy``: an ``easy_scene``, drawn as asked."""
    intended = easy_scene(rng) if easy else demo_scene.sample_scene(rng)
    prompt = demo_prompt.write_prompt(intended, rng, "real" if rng.random() < 0.5 else "synthetic")
    drawn = intended.copy() if easy else generate(intended, CHECK_GENERATOR, rng)
    image, words = render_with_regions(drawn, int(rng.integers(2 ** 31)), aligned)
    return {"image": image, "words": words, "prompt": prompt, "drawn": drawn}
# ---------------------------------------------------------------------------------- tokenizer

def build_corpus(seed: int) -> list[str]:
    """Text the tokenizer is trained on: demo words, scoring questions, generic questions."""
    rng = np.random.default_rng(seed)
    lines = list(demo_prompt.demo_vocabulary())
    lines += [" " + w for w in demo_prompt.demo_vocabulary()]
    lines += list(T2I_NAMES) + list(GENERATOR_NAMES) + list(GENERIC_TEXT)
    lines += ["Yes", "No", " Yes", " No"] + [str(d) for d in range(10)]
    lines += list(region_words()) + [" " + w for w in region_words()]
    for _ in range(400):
        scene = demo_scene.sample_scene(rng)
        kind = "real" if rng.random() < 0.5 else "synthetic"
        prompt = demo_prompt.write_prompt(scene, rng, kind)
        info = {"t2i_model": str(rng.choice(T2I_NAMES)), "type": kind,
                "promt_meaningless": float(rng.integers(0, 2)), "split_confidence": float(rng.uniform(0, 5)),
                "attribute_confidence": float(rng.uniform(0, 5))}
        info = prompts.drop_structural(info, 0.3, rng)
        lines.append(prompts.total_question(prompt.text, info))
        element = prompt.elements[int(rng.integers(len(prompt.elements)))]
        text = element.key.rstrip()
        lines.append(prompts.element_question(prompt.text, text[: text.rindex("(")].strip(), element.category,
                                              info))
        item = {"drawn": generate(scene, CHECK_GENERATOR, rng), "prompt": prompt}
        for qtype in CORPUS_TYPES:
            q, a = generic_question(item, rng, qtype)
            lines += [q, a]
    return lines


def train_tokenizer(corpus: list[str], family: str) -> PreTrainedTokenizerFast:
    specials = SPECIAL_TOKENS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    named = {}
    if family == "internvl":
        named = {"start_image_token": "<img>", "end_image_token": "</img>",
                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    else:
        named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=named, model_max_length=2048, padding_side="left")
    fast.add_special_tokens({"extra_special_tokens": [t for t in specials if t not in
                                                      ("<|endoftext|>", "<|im_end|>")]},
                            replace_extra_special_tokens=False)
    fast.chat_template = CHAT_TEMPLATES[family]
    # Everything the scoring and pre-training questions answer with must be one token.
    answers = {a for t in QUESTION_TYPES for a in answer_set(t)}
    words = set(prompts.TOTAL_LABELS + prompts.ELEMENT_LABELS) | answers
    for word in sorted(words):
        ids = fast(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"answer word {word!r} is {len(ids)} tokens; raise VOCAB_SIZE")
    return fast


# ---------------------------------------------------------------------------------- models

def _ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def build_qwen(tok: PreTrainedTokenizerFast):
    pad, eos, im_start = _ids(tok, "<|endoftext|>", "<|im_end|>", "<|im_start|>")
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    half = head_dim // 2  # mrope sections split the rotary half-dimension over (t, h, w)
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), **TEXT, bos_token_id=im_start, eos_token_id=eos, pad_token_id=pad,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
                         tie_word_embeddings=True),
        vision_config=dict(depth=VISION_LAYERS, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
                           num_heads=VISION_HEADS, in_channels=3, patch_size=PATCH, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=IMAGE_SIZE, out_hidden_size=TEXT["hidden_size"],
                           fullatt_block_indexes=[VISION_LAYERS - 1]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        # Tied, as in Qwen2.5-VL-3B: the region-word objective then aligns image tokens with the
        # input embeddings of the words a question uses.
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    pixels = IMAGE_SIZE * IMAGE_SIZE  # fixed 112x112: 14x14 patches, merged 2x2 into 49 tokens
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=PATCH,
                                               merge_size=2, temporal_patch_size=2)
    processor_config = {"processor_class": "Qwen2_5_VLProcessor"}
    return model, image_processor, processor_config


def build_internvl(tok: PreTrainedTokenizerFast):
    pad, eos, im_start = _ids(tok, "<|endoftext|>", "<|im_end|>", "<|im_start|>")
    seq_len = (IMAGE_SIZE // PATCH // 2) ** 2  # 14x14 patches, pixel shuffle 0.5 -> 49 tokens
    config = InternVLConfig(
        text_config=dict(model_type="qwen2", vocab_size=len(tok), **TEXT, bos_token_id=im_start, eos_token_id=eos,
                         pad_token_id=pad, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         tie_word_embeddings=True),
        vision_config=dict(hidden_size=VISION_HIDDEN, num_hidden_layers=VISION_LAYERS,
                           num_attention_heads=VISION_HEADS, intermediate_size=2 * VISION_HIDDEN,
                           image_size=IMAGE_SIZE, patch_size=PATCH, num_channels=3),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=seq_len,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
    )
    model = InternVLForConditionalGeneration(config)
    # One 112 px tile per image, normalised as InternVL normalises (ImageNet statistics).
    image_processor = GotOcr2ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                               crop_to_patches=False, min_patches=1, max_patches=1,
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor_config = {"processor_class": "InternVLProcessor", "image_seq_length": seq_len}
    return model, image_processor, processor_config


BUILDERS = {"qwen2_5_vl": build_qwen, "internvl": build_internvl}


def save_checkpoint(out: Path, model, tokenizer, image_processor, processor_config) -> None:
    """save_pretrained of every part into a temporary directory, then swapped into place."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        # What AutoProcessor reads on machines where the composite processor can be built.
        (tmp / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")


# ---------------------------------------------------------------------------------- pre-training

REGION_MIN_COVER = 0.15
CENTRE_WORD = "one"   # marks the cell holding an instance's centre (what counting reads)


def region_words() -> tuple[str, ...]:
    """Words the image tokens are trained to show: what covers their cell, and the scene's
    background, style and instance centres."""
    return (COLOR_NAMES + SHAPES + TEXTURE_WORDS + tuple(demo_scene.BACKGROUNDS) + STYLE_WORDS
            + (CENTRE_WORD,))


def render_with_regions(scene, seed: int, aligned: bool = False) -> tuple:
    """The image, and for each of the GRID x GRID image-token cells (raster order) its words.

    A second render of the same scene (same jitter seed) with plain fills on a blank background
    gives exact pixel masks: a cell shows a group's colour, shape and texture when the group
    covers at least REGION_MIN_COVER of it; the cell holding the centre of each drawn shape
    also gets CENTRE_WORD; every cell gets the background and the style.
    """
    image = render_scene(scene, size=IMAGE_SIZE, rng=np.random.default_rng(seed), aligned=aligned)
    flat = scene.copy()
    flat.style, flat.background = "none", "snow"
    for o in flat.objects:
        o.texture = "plain"
    pixels = np.asarray(render_scene(flat, size=IMAGE_SIZE, rng=np.random.default_rng(seed), aligned=aligned)).astype(int)
    cell = IMAGE_SIZE // GRID
    words = [[scene.background] + ([scene.style] if scene.style != "none" else []) for _ in range(GRID * GRID)]
    for g, o in enumerate(scene.objects):
        mask = np.abs(pixels - np.array(object_rgb(flat.objects[g]))).sum(-1) == 0
        cover = mask.reshape(GRID, cell, GRID, cell).mean(axis=(1, 3)).ravel()
        for k in np.flatnonzero(cover >= REGION_MIN_COVER):
            words[k] += [shown_color(o), o.shape] + ([o.texture] if o.texture != "plain" else [])
        parts, n = ndimage.label(mask)
        for cy, cx in ndimage.center_of_mass(mask, parts, range(1, n + 1)) if n else []:
            words[int(cy) // cell * GRID + int(cx) // cell].append(CENTRE_WORD)
    return image, words


def image_features(adapter, batch) -> torch.Tensor:
    """(B, image tokens, hidden) projector outputs, the vectors that fill the image tokens."""
    m = adapter.model.model
    if adapter.family == "qwen2_5_vl":
        out = m.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        return torch.stack(list(out.pooler_output))
    cfg = adapter.model.config
    return m.get_image_features(batch["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
                                vision_feature_select_strategy=cfg.vision_feature_select_strategy).pooler_output


class DenseTargets:
    """Multi-hot cell targets over ``region_words`` and their logits through the tied LM head.

    Each image token is scored against the (tied) input embeddings of its region words, so image
    tokens land where the words a question uses are: looking up "red" or "circle" among the image
    tokens works like looking it up in text.

    With ``scene_words`` w > 0 every cell's target also holds w for each word the whole scene shows
    (its largest cell target, so a cell's own words stay at 1): a token then carries a summary of
    the scene that a question can read from any of the 49 tokens, as a bidirectional vision tower
    can produce (``probe_language.py --scene-words``: with ideal tokens of this kind the language
    model learned yes/no presence; with cell words alone it did not within 5500 steps)."""

    def __init__(self, adapter, scene_words: float = 0.0):
        self.scene_words = scene_words
        self.words = region_words()
        tok = adapter.tokenizer
        # A word's first token with a leading space, as it reads mid-sentence (' Van' of 'Van Gogh').
        self.ids = torch.tensor([tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in self.words])
        self.index = {w: i for i, w in enumerate(self.words)}
        self.head = adapter.model.get_output_embeddings()

    def target(self, items) -> torch.Tensor:
        t = torch.zeros(len(items), GRID * GRID, len(self.words))
        for b, item in enumerate(items):
            for k, cell in enumerate(item["words"]):
                t[b, k, [self.index[w] for w in cell]] = 1.0
        if self.scene_words:
            t = torch.maximum(t, self.scene_words * t.amax(dim=1, keepdim=True))
        return t

    def loss(self, features: torch.Tensor, items) -> torch.Tensor:
        logits = F.linear(features, self.head.weight[self.ids])
        return F.binary_cross_entropy_with_logits(logits.float(), self.target(items))


PRESENCE_LABELS = (tuple(("shape", w) for w in SHAPES) + tuple(("color", w) for w in COLOR_NAMES)
                   + tuple(("background", w) for w in demo_scene.BACKGROUNDS)
                   + tuple(("texture", w) for w in TEXTURE_WORDS) + tuple(("style", w) for w in STYLE_WORDS))


PRESENCE_INDEX = {label: i for i, label in enumerate(PRESENCE_LABELS)}


def shown_labels(drawn) -> set[tuple[str, str]]:
    """(kind, word) of everything a drawn scene shows: its shapes, colours (as shown), textures,
    background and style ("plain" and "none" included)."""
    shown = {("background", drawn.background), ("style", drawn.style)}
    for o in drawn.objects:
        shown |= {("shape", o.shape), ("color", shown_color(o)), ("texture", o.texture)}
    return shown


def presence_target(items) -> torch.Tensor:
    """(B, PRESENCE_LABELS) 0/1: which shapes, colours (as shown), background, textures and style
    each item's drawn scene shows."""
    t = torch.zeros(len(items), len(PRESENCE_LABELS))
    for b, item in enumerate(items):
        t[b, [PRESENCE_INDEX[x] for x in shown_labels(item["drawn"]) if x in PRESENCE_INDEX]] = 1.0
    return t


class PresenceHead(torch.nn.Module):
    """An image-level training aid, not part of the saved model: a read-out of which shapes,
    colours, background, textures and style a picture shows. ``probe_vision.py`` measured that an
    image-level presence objective (its own head over the tower's outputs, shapes, colours and
    backgrounds, no dense loss) teaches the bases' tower the demo's shapes (AUC 0.95 after 108k
    scenes at batch 16 with the easy-first curriculum) where dense cell targets do not (0.56-0.57).

    Default: a linear read-out of the mean and the max of the image tokens, in directions of its
    own. ``words`` (the ``DenseTargets`` of the model): through the tied word embeddings instead,
    each label's logit the max over the image tokens of the token's score for the label's word
    (times a learnt scale, plus a learnt bias), so that the presence lands in the directions the
    language model reads a word in; the embeddings are trained with the model and move towards
    the tower too. Measured on the five-stage tiny Qwen2.5-VL (2,000 tower steps at lr 1e-3, a
    trial script of the same loss): the shape words' max-pooled tied-head AUC 0.76 -> 0.87."""

    def __init__(self, hidden: int, words: "DenseTargets | None" = None):
        super().__init__()
        self.words = words
        if words is None:
            self.linear = torch.nn.Linear(2 * hidden, len(PRESENCE_LABELS))
        else:
            self.ids = words.ids[[words.index[w] for _, w in PRESENCE_LABELS]]
            self.scale = torch.nn.Parameter(torch.ones(len(PRESENCE_LABELS)))
            self.bias = torch.nn.Parameter(torch.zeros(len(PRESENCE_LABELS)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.words is None:
            return self.linear(torch.cat([features.mean(1), features.amax(1)], -1).float())
        scores = F.linear(features, self.words.head.weight[self.ids]).amax(1).float()
        return scores * self.scale + self.bias

    def loss(self, features: torch.Tensor, items) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(features), presence_target(items))


# The curriculum: (name, steps, question mix). "vision" trains the vision tower and projector
# alone on the dense cell targets (no language model in the step, so it is cheap); the later
# phases train everything on generic questions with the dense loss kept on. Every step draws
# fresh scenes: a fixed pool is memorised (measured: held-out shape AUC stalled at 0.70-0.73
# while the training loss kept falling).
VQA_MIX = {"shape": 0.12, "color": 0.08, "color_shape": 0.16, "count": 0.14, "color_of": 0.08,
           "relation": 0.14, "background": 0.04, "texture": 0.06, "style": 0.04, "caption": 0.14}
# Yes/no presence answers stayed at the majority rate through the first 1250 steps of the mixed
# questions while "what colour is the heart" and the background were learned (InternVL, held out);
# a phase weighted towards presence follows, then the full mix again.
PRESENCE_MIX = {"shape": 0.2, "color": 0.15, "color_shape": 0.25, "texture": 0.06, "style": 0.04,
                "caption": 0.15, "color_of": 0.05, "background": 0.05, "count": 0.05}
PHASES = (
    ("vision", 3000, {}),
    ("generic", 1500, VQA_MIX),
    ("presence", 1500, PRESENCE_MIX),
    ("generic+", 1500, VQA_MIX),
)
# The second stage continues from the first one's weights with a fresh optimiser and its own
# scene stream: the dense targets add the scene's words to every cell (DenseTargets), a short
# vision phase moves the image tokens there, then presence questions with the colour-of look-up
# that the language probe learned presence from, then the full mix.
SCENE_WORDS = 0.5
SCENE_MIX = {"shape": 0.18, "color": 0.15, "color_shape": 0.2, "texture": 0.1, "style": 0.05, "color_of": 0.17,
             "caption": 0.1, "count": 0.05}
SCENE_PHASES = (
    ("scene-vision", 600, {}),
    ("scene-presence", 2600, SCENE_MIX),
    ("scene-generic", 900, VQA_MIX),
)
# The third stage teaches the VQAScore wording itself: after stage 2 the model answered "Is there
# anything red?" (held out 0.91 / 0.92) but not `Does the image show "red"?` (zero-shot colour
# AUC 0.48 / 0.54 on held-out scenes, and 0.53 / 0.53 on the demo's elements), so most of its
# questions are bare-word captions of every kind ("word"), with the presence and look-up questions
# kept in the mix, then the full mix.
CAPTION_MIX = {"word": 0.4, "caption": 0.1, "shape": 0.06, "color": 0.06, "color_shape": 0.08, "texture": 0.05,
               "style": 0.05, "color_of": 0.08, "background": 0.04, "count": 0.04, "relation": 0.04}
CAPTION_PHASES = (
    ("caption-words", 3000, CAPTION_MIX),
    ("caption-generic", 600, VQA_MIX),
)


class Stage(NamedTuple):
    """One pretrain() call: its curriculum phases, the dense targets' scene-word weight, the
    scene stream (step s of the stage draws its scenes from default_rng([seed, stream, s])), the
    weight of the image-level presence loss (``presence_words``: read through the tied word
    embeddings, see ``PresenceHead``) and the easy-first curriculum of its vision phases
    (``easy_steps`` 0: none)."""
    name: str
    phases: tuple
    scene_words: float
    stream: int
    presence: float = 0.0
    easy_steps: int = 0
    easy_floor: float = 0.0
    presence_words: bool = False


# The fourth stage teaches the tower shapes (probe_vision.py: an image-level presence objective
# does, the dense cell targets do not) and starts the reading of them: vision steps with the
# presence loss on easy-first pictures, then questions weighted to shapes.
SHAPE_MIX = {"word": 0.25, "shape": 0.15, "color_shape": 0.15, "count": 0.08, "relation": 0.06, "caption": 0.1,
             "color": 0.05, "texture": 0.04, "style": 0.04, "color_of": 0.05, "background": 0.03}
SHAPE_PHASES = (
    ("shapes-vision", 5000, {}),
    ("shapes-questions", 1000, SHAPE_MIX),
)
# The fifth stage drills reading: after the fourth, the image tokens carry the shapes (linear probe
# 0.87 / 0.77) and the style (AUC 1.0 through the tied head) but shape, texture and style presence
# answers stayed at their majority rates within 2,500 question steps; probe_language.py learned
# presence from ideal tokens only after a 3,000-step plateau, on presence questions and the
# colour-of look-up alone.
READ_MIX = {"shape": 0.2, "color_shape": 0.15, "texture": 0.08, "style": 0.06, "color": 0.06, "color_of": 0.12,
            "word": 0.2, "caption": 0.06, "count": 0.04, "relation": 0.03}
READ_PHASES = (
    ("reading", 5000, READ_MIX),
    ("reading-generic", 500, VQA_MIX),
)

# The sixth stage teaches answer formats (instruction following, as a real LVLM brings it to the
# fine-tune): yes/no questions answered 1 / 0 under a generic instruction, counts of any shape
# (0 for an absent one), 1-5 rating scales, with the rest of the mix kept. Without it the bases
# had never answered "0": the fine-tune's element question started at P("1") = 0.9996 on every element, where the
# token-focus MSE's gradient (p(1 - p)) vanishes, and 96 steps of overfitting 20 images left the
# element answers at the majority rate (measured on fold 0). Without "rate", the total question
# started near "1" (the yes of the digit format) and the tiny Qwen2.5-VL's fine-tuned totals
# stayed there (mean 1.003, sd 0.008 over the demo's OOF images); with counts alone on the 1-5
# scale, the tiny InternVL still read the total question as a yes/no one (fold 0: mean 1.44,
# SRCC -0.22 with the annotators), and its fine-tune kept that order (-0.20). A 1-5 rating of how
# much of a caption is shown, from the drawn scene's truth (not the annotators'), teaches the scale.
INSTRUCT_MIX = {"digit": 0.27, "count0": 0.10, "rate": 0.15, "word": 0.10, "caption": 0.08, "shape": 0.04,
                "color": 0.04, "color_shape": 0.05, "texture": 0.03, "style": 0.03, "color_of": 0.05,
                "background": 0.02, "count": 0.02, "relation": 0.02}
INSTRUCT_PHASES = (
    ("instruct", 2000, INSTRUCT_MIX),
)

STAGES = (
    Stage("base", PHASES, 0.0, 1),
    Stage("scene", SCENE_PHASES, SCENE_WORDS, 3),
    Stage("caption", CAPTION_PHASES, SCENE_WORDS, 4),
    Stage("shapes", SHAPE_PHASES, SCENE_WORDS, 5, presence=1.0, easy_steps=3000, easy_floor=0.1),
    Stage("reading", READ_PHASES, SCENE_WORDS, 6, presence=1.0),
    Stage("instruct", INSTRUCT_PHASES, SCENE_WORDS, 7, presence=1.0),
)
ALL_PHASES = tuple(ph for stage in STAGES for ph in stage.phases)


def held_out_examples(n_per_type: int, seed: int) -> list[tuple]:
    """(image, question, answer, qtype) on fresh scenes no training step draws."""
    rng = np.random.default_rng([seed, 2])
    out = []
    for qtype in QUESTION_TYPES:
        for _ in range(n_per_type):
            item = draw_item(rng)
            q, a = generic_question(item, rng, qtype)
            out.append((item["image"], q, a, qtype))
    return out


@torch.no_grad()
def evaluate(adapter, examples, batch_size: int = 64) -> dict[str, float]:
    """Accuracy per question type: argmax of the first-token logits among that type's answers."""
    adapter.model.eval()
    answer_ids = {t: adapter.label_ids(answer_set(t)) for t in QUESTION_TYPES}
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        logits = adapter.last_logits(adapter.encode([e[0] for e in chunk], [e[1] for e in chunk]))
        for row, (_, _, answer, qtype) in zip(logits, chunk):
            pred = answer_set(qtype)[int(row[answer_ids[qtype]].argmax())]
            hits.setdefault(qtype, []).append(pred == answer)
    return {t: round(float(np.mean(h)), 4) for t, h in hits.items()}


def majority_baseline(examples) -> dict[str, float]:
    """Accuracy of always giving each type's most frequent answer (the bar to clear)."""
    out = {}
    for t in QUESTION_TYPES:
        answers = [e[2] for e in examples if e[3] == t]
        if answers:
            _, counts = np.unique(answers, return_counts=True)
            out[t] = round(float(counts.max() / len(answers)), 4)
    return out


@torch.no_grad()
def evaluate_zeroshot(adapter, n_scenes: int, seed: int) -> dict:
    """The VQAScore zero-shot reading on held-out scenes, against the drawn scene's truth: per
    element kind the AUC of P(Yes) to ``Does the image show "<element text>"?``; for the whole
    prompt the Spearman correlation of P(Yes) with the truth total."""
    rng = np.random.default_rng([seed, 13])
    yes_no = adapter.label_ids(["Yes", "No"])
    scores: dict[str, list[tuple[float, float]]] = {}
    adapter.model.eval()
    for _ in range(n_scenes):
        item = draw_item(rng)
        els = item["prompt"].elements
        questions = [prompts.vqascore_question(item["prompt"].text)]
        questions += [prompts.vqascore_question(split_element_key(e.key)[0]) for e in els]
        logits = adapter.last_logits(adapter.encode([item["image"]] * len(questions), questions))
        p_yes = torch.softmax(logits[:, yes_no], -1)[:, 0].numpy()
        clarity = [e.clarity(item["drawn"]) for e in els]
        scores.setdefault("total", []).append((p_yes[0], truth_total([e.kind for e in els], clarity)))
        for e, c, p in zip(els, clarity, p_yes[1:]):
            for key in (e.kind, "all"):
                scores.setdefault(key, []).append((p, float(c >= TRUTH_THRESHOLD)))
    out = {}
    for key, pairs in sorted(scores.items()):
        x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        if key == "total":
            out[key] = {"srcc": round(srcc(y, x), 4), "n": len(y)}
        else:
            auc = roc_auc_score(y, x) if len(np.unique(y)) == 2 else float("nan")
            out[key] = {"auc": round(float(auc), 4), "accuracy": round(float(((x >= 0.5) == y).mean()), 4),
                        "majority": round(float(max(y.mean(), 1 - y.mean())), 4), "n": len(y)}
    return out


class Capture:
    """Keeps the output of the projector during the full model's forward (for the dense loss)."""

    def __init__(self, adapter):
        m = adapter.model.model
        module = m.visual.merger if adapter.family == "qwen2_5_vl" else m.multi_modal_projector
        self.out = None
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.out = output

    def features(self, batch_size: int) -> torch.Tensor:
        return self.out.reshape(batch_size, GRID * GRID, -1)


def pretrain(adapter, *, phases, batch_size: int, lr: float, seed: int, state_path: Path,
             log_every: int = 100, save_every: int = 250, on_phase_end=None, scene_words: float = 0.0,
             stream: int = 1, presence: float = 0.0, easy_steps: int = 0, easy_floor: float = 0.0,
             presence_words: bool = False) -> dict:
    """Full-parameter training through the curriculum ``phases`` (see PHASES), resumable.

    Loss: cross-entropy of the first answer token at the last position (QA phases) plus the
    dense cell loss of ``DenseTargets(adapter, scene_words)`` on the projector outputs. Step s
    draws its scenes from ``default_rng([seed, stream, s])``, so a run resumed from ``state_path`` (written every
    ``save_every`` steps) continues exactly as an uninterrupted one. ``on_phase_end(name)`` runs
    after each phase (held-out evaluation). ``presence`` > 0 adds that weight of a
    ``PresenceHead`` loss (the head is trained alongside and then dropped; ``presence_words``:
    its read-out through the tied word embeddings); ``easy_steps`` > 0
    draws the vision phases' scenes easy (``easy_scene``) with a share falling from 1 to
    ``easy_floor`` over the stage's first ``easy_steps`` steps."""
    if presence_words and not presence:
        raise ValueError("presence_words reads the presence loss through the word embeddings: give it a weight (presence > 0)")
    torch.manual_seed(seed)
    dense = DenseTargets(adapter, scene_words)
    capture = Capture(adapter)
    head = PresenceHead(adapter.model.get_output_embeddings().weight.shape[1],
                        dense if presence_words else None) if presence else None
    answers = sorted({a for t in QUESTION_TYPES for a in answer_set(t)})
    answer_token = dict(zip(answers, adapter.label_ids(answers)))
    model = adapter.model
    model.train()
    steps = sum(n for _, n, _ in phases)
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = 200
    bounds = np.cumsum([0] + [n for _, n, _ in phases])
    # One learning-rate schedule per block of consecutive phases of one kind (vision only, or
    # questions): a change of question mix inside a block does not restart the warm-up.
    blocks, start = [], 0
    for p in range(1, len(phases) + 1):
        if p == len(phases) or bool(phases[p][2]) != bool(phases[start][2]):
            blocks.append((bounds[start], bounds[p]))
            start = p

    def rate(s):  # per block: warm-up, then cosine to 10% of the peak
        b0, b1 = next(((a, b) for a, b in blocks if s < b), blocks[-1])  # s = steps: after the last
        t, n = s - b0, max(1, b1 - b0)
        return min((t + 1) / warmup, 1.0) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t / n)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    history = {"qa": [], "dense": [], "presence": []}
    done, seconds, evals = 0, 0.0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        if head is not None and state.get("presence_head") is not None:
            head.load_state_dict(state["presence_head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        done, seconds, history, evals = state["step"], state["seconds"], state["history"], state["evals"]
        history.setdefault("presence", [])   # a state written before the presence loss existed
        tqdm.write(f"{adapter.family}: resumed at step {done} of {steps}")
    t0 = time.perf_counter() - seconds

    def save_state():
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "presence_head": head.state_dict() if head is not None else None,
                        "step": done, "seconds": time.perf_counter() - t0, "history": history,
                        "evals": evals}, tmp)

    bar = tqdm(total=steps, initial=done, desc=f"pretrain {adapter.family}", mininterval=10)
    for p, (name, n_steps, mix) in enumerate(phases):
        if done >= bounds[p + 1]:
            if on_phase_end is not None and len(evals) <= p:  # stopped after the phase, before its evaluation
                evals.append(on_phase_end(name))
                model.train()
            continue
        tasks, weights = list(mix), np.array(list(mix.values()), float)
        for s in range(max(done, bounds[p]), bounds[p + 1]):
            rng = np.random.default_rng([seed, stream, s])
            easy = 0.0 if mix or not easy_steps else easy_share(s, easy_steps, easy_floor)
            items = [draw_item(rng, easy=bool(easy) and rng.random() < easy) for _ in range(batch_size)]
            if mix:
                drawn = [generic_question(it, rng, str(t)) for it, t in
                         zip(items, rng.choice(tasks, size=batch_size, p=weights / weights.sum()))]
                batch = adapter.prepare(adapter.encode([it["image"] for it in items], [d[0] for d in drawn]))
                logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1].float()
                qa_loss = F.cross_entropy(logits, torch.tensor([answer_token[d[1]] for d in drawn]))
                features = capture.features(batch_size)
            else:
                image_inputs, _ = adapter.process_images([it["image"] for it in items])
                features = image_features(adapter, adapter.prepare(image_inputs))
                qa_loss = torch.zeros(())
            dense_loss = dense.loss(features, items)
            presence_loss = head.loss(features, items) if head is not None else torch.zeros(())
            loss = qa_loss + dense_loss + presence * presence_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            history["qa"].append(qa_loss.item())
            history["dense"].append(dense_loss.item())
            history["presence"].append(presence_loss.item())
            done = s + 1
            bar.update(1)
            if done % log_every == 0:
                bar.set_postfix(phase=name, qa=f"{np.mean(history['qa'][-log_every:]):.3f}",
                                dense=f"{np.mean(history['dense'][-log_every:]):.4f}",
                                presence=f"{np.mean(history['presence'][-log_every:]):.4f}")
            if done % save_every == 0 or done == bounds[p + 1]:
                save_state()
        if on_phase_end is not None:
            evals.append(on_phase_end(name))
            model.train()
            save_state()
    bar.close()
    model.eval()
    extra = {"presence": presence, "easy_steps": easy_steps, "easy_floor": easy_floor} if presence or easy_steps else {}
    if presence_words:
        extra["presence_words"] = True
    return {"steps": steps, "phases": [{"name": n, "steps": k, "mix": m, "scene_words": scene_words, **extra}
                                       for n, k, m in phases],
            "batch_size": batch_size, "lr": lr, "fresh_scenes": steps * batch_size,
            "seconds": round(time.perf_counter() - t0, 1),
            "final_qa_loss": round(float(np.mean(history["qa"][-log_every:])), 4),
            "final_dense_loss": round(float(np.mean(history["dense"][-log_every:])), 4),
            **({"final_presence_loss": round(float(np.mean(history["presence"][-log_every:])), 4)} if presence else {}),
            "after_phase": evals}


def measure_step_ms(adapter, batch_size: int = 8, repeats: int = 10, seed: int = 0) -> float:
    """Median wall time of one training step (forward, backward, AdamW) on demo-length questions."""
    rng = np.random.default_rng(seed)
    images = [draw_item(rng)["image"] for _ in range(batch_size)]
    info = {"t2i_model": "SDXL-Turbo", "type": "real", "promt_meaningless": 0.0, "split_confidence": 4.3,
            "attribute_confidence": 4.7}
    questions = [prompts.element_question("two small red circles to the left of a blue star in the desert",
                                          "red", "attribute-color", info)] * batch_size
    batch = adapter.encode(images, questions)
    model = adapter.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    times = []
    for _ in range(repeats + 2):
        t = time.perf_counter()
        loss = adapter.last_logits(batch).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    model.load_state_dict(state)
    model.eval()
    return round(1000 * float(np.median(times[2:])), 1)


def param_counts(adapter) -> dict[str, int]:
    total = adapter.num_parameters()
    vision = sum(p.numel() for n, p in adapter.model.named_parameters() if adapter.is_vision_param(n))
    return {"total": total, "vision_and_projector": vision, "language": total - vision}


def scaled_phases(phases, scale: float):
    return tuple((name, max(1, round(n * scale)), mix) for name, n, mix in phases)


def merge_stages(stages: list[dict]) -> dict:
    """One card record of consecutive pretrain() stages: their phases and evaluations in order."""
    last = stages[-1]
    return {"steps": sum(s["steps"] for s in stages),
            "phases": [p for s in stages for p in s["phases"]],
            "batch_size": last["batch_size"], "lr": last["lr"],
            "fresh_scenes": sum(s["fresh_scenes"] for s in stages),
            "seconds": round(sum(s["seconds"] for s in stages), 1),
            "final_qa_loss": last["final_qa_loss"], "final_dense_loss": last["final_dense_loss"],
            "after_phase": [e for s in stages for e in s["after_phase"]],
            "stages": [{"name": s["stage"], "steps": s["steps"], "seconds": s["seconds"]} for s in stages]}


def restore_stages(published: Path, work: Path) -> None:
    """Recreate the work records of the stages a published base went through (its card.json), with
    its weights as the last one's, so that a build continues from the published base instead of
    redoing its stages (``--from-published``: a new stage added after the base was built)."""
    card = json.loads((published / "card.json").read_text())
    pre = card["pretrain"]
    done = pre.get("stages") or [{"name": STAGES[0][0], "steps": pre["steps"], "seconds": pre["seconds"]}]
    names = [name for name, *_ in STAGES]
    if [d["name"] for d in done] != names[:len(done)]:
        raise SystemExit(f"{published}: its stages {[d['name'] for d in done]} are not a start of {names}")
    first = 0
    for d in done:
        phases = pre["phases"][first:first + len(STAGES[names.index(d["name"])][1])]
        evals = pre["after_phase"][first:first + len(phases)]
        first += len(phases)
        stage_dir = work / d["name"]
        if (stage_dir / "stats.json").exists():
            continue
        if d is done[-1]:
            with atomic_dir(stage_dir) as tmp:
                for f in published.iterdir():
                    if f.name != "card.json":
                        (tmp / f.name).write_bytes(f.read_bytes())
        stage_dir.mkdir(parents=True, exist_ok=True)
        stats = {"stage": d["name"], "steps": d["steps"], "seconds": d["seconds"], "phases": phases,
                 "batch_size": pre["batch_size"], "lr": pre["lr"], "fresh_scenes": d["steps"] * pre["batch_size"],
                 "final_qa_loss": pre["final_qa_loss"], "final_dense_loss": pre["final_dense_loss"],
                 "after_phase": evals, "restored_from": str(published)}
        with atomic_path(stage_dir / "stats.json") as tmp:
            tmp.write_text(json.dumps(stats, indent=2) + "\n")


def make_family(family: str, out_dir: Path, seed: int, corpus: list[str], args) -> dict:
    """Tokenizer, random-init model, the pre-training curriculum; saved with its card.json.

    Work in progress lives in ``<out>/.work/<family>/``: the random-init checkpoint, each
    stage's resumable training state and, once a stage of ``STAGES`` is done, its weights and
    record in ``<stage>/`` (a re-run continues from the last finished stage). The finished base
    replaces ``<out>/<name>`` atomically."""
    target = out_dir / FAMILIES[family]
    work = out_dir / ".work" / family
    init_dir = work / "init"
    if not (init_dir / "config.json").exists():
        torch.manual_seed(seed)
        tok = train_tokenizer(corpus, family)
        model, image_processor, processor_config = BUILDERS[family](tok)
        save_checkpoint(init_dir, model, tok, image_processor, processor_config)
    processor_config = json.loads((init_dir / "processor_config.json").read_text())
    # Pre-train through the same loading path and encode() the pipeline uses.
    adapter = load_adapter(family, str(init_dir))
    held_out = held_out_examples(args.eval_per_type, seed)

    def record(phase):
        result = {"phase": phase, "generic": evaluate(adapter, held_out),
                  "zeroshot": evaluate_zeroshot(adapter, args.eval_scenes, seed)}
        tqdm.write(f"{family} after {phase}: {json.dumps(result)}")
        return result

    if getattr(args, "from_published", False):
        restore_stages(target, work)
    stages = []
    finished = [(work / st.name / "stats.json").exists() for st in STAGES]
    for k, st in enumerate(STAGES):
        stage_dir = work / st.name
        if finished[k]:   # the next stage continues from the last finished one's weights
            stages.append(json.loads((stage_dir / "stats.json").read_text()))
            if k + 1 == len(STAGES) or not finished[k + 1]:
                adapter = load_adapter(family, str(stage_dir))
                processor_config = json.loads((stage_dir / "processor_config.json").read_text())
                tqdm.write(f"{family}: stage {st.name} done ({stage_dir}), continuing from it")
            continue
        stats = pretrain(adapter, phases=scaled_phases(st.phases, args.phase_scale), batch_size=args.batch_size,
                         lr=args.lr, seed=seed, state_path=work / f"state-{st.name}.pt", on_phase_end=record,
                         scene_words=st.scene_words, stream=st.stream, presence=st.presence,
                         easy_steps=max(1, round(st.easy_steps * args.phase_scale)) if st.easy_steps else 0,
                         easy_floor=st.easy_floor, presence_words=st.presence_words)
        stats["stage"] = st.name
        save_checkpoint(stage_dir, adapter.model, adapter.tokenizer, adapter.image_processor, processor_config)
        with atomic_path(stage_dir / "stats.json") as tmp:
            tmp.write_text(json.dumps(stats, indent=2) + "\n")
        stages.append(stats)
    stats = merge_stages(stages)
    step_ms = measure_step_ms(adapter, seed=seed)
    save_checkpoint(target, adapter.model, adapter.tokenizer, adapter.image_processor, processor_config)
    card = {
        "family": family, "seed": seed, "parameters": param_counts(adapter), "vocab_size": len(adapter.tokenizer),
        "image_size": IMAGE_SIZE, "patch_size": PATCH, "image_tokens": GRID * GRID,
        "train_step_ms_batch8": step_ms, "torch_threads": torch.get_num_threads(),
        "checkpoint_bytes": sum(f.stat().st_size for f in target.iterdir()),
        "pretrain": {**stats, "held_out_per_type": args.eval_per_type, "held_out_scenes": args.eval_scenes,
                     "majority_baseline": majority_baseline(held_out)},
    }
    (target / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("input/pretrained"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--family", choices=sorted(FAMILIES), action="append",
                    help="build only this family (repeatable); default both")
    ap.add_argument("--phase-scale", type=float, default=1.0,
                    help=f"multiply every curriculum phase's steps (default phases: "
                         f"{[(n, k) for n, k, _ in ALL_PHASES]})")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-per-type", type=int, default=200, help="held-out generic questions per type")
    ap.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes for the zero-shot reading")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    ap.add_argument("--from-published", action="store_true",
                    help="continue from the published base in --out: its card's finished stages are not redone")
    args = ap.parse_args(argv)
    if args.phase_scale <= 0:
        ap.error("--phase-scale must be positive")
    torch.set_num_threads(args.threads)
    corpus = build_corpus(args.seed)
    for family in args.family or list(FAMILIES):
        card = make_family(family, args.out, args.seed, corpus, args)
        print(json.dumps({k: card[k] for k in ("family", "parameters", "train_step_ms_batch8",
                                               "checkpoint_bytes")}),
              json.dumps(card["pretrain"]["after_phase"][-1]), sep="\n", flush=True)


if __name__ == "__main__":
    main()
