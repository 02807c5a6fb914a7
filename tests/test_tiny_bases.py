"""The tiny demo bases: generic visual QA only, fresh scenes, dense cell targets, resumable."""
import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenfocus.demo.scene import Scene, SceneObject
from tokenfocus.lvlm import load_adapter
from tokenfocus.prompts import ELEMENT_INSTRUCTION, TOTAL_INSTRUCTION

ROOT = Path(__file__).resolve().parents[1]
# Question types the committed bases answer well above the majority rate on held-out scenes
# (card.json). Shape presence, counting and texture are not among them: see the README.
LEARNED = ("color", "color_shape", "color_of", "background", "style", "caption", "word", "digit", "rate")


@pytest.fixture(scope="module")
def mtb():
    spec = importlib.util.spec_from_file_location("make_tiny_bases", ROOT / "src" / "tools" / "make_tiny_bases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretraining_asks_generic_questions_only(mtb):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        item = mtb.draw_item(rng)
        for qtype in mtb.QUESTION_TYPES:
            q, a = mtb.generic_question(item, rng, qtype)
            assert TOTAL_INSTRUCTION not in q and ELEMENT_INSTRUCTION not in q and "Text prompt" not in q
            assert a in mtb.answer_set(qtype), (qtype, q, a)
            seen.add((qtype, a))
    # Yes/No types see both answers; counts 1-4 and captions whole and partial both occur.
    for qtype in ("shape", "color", "color_shape", "relation", "texture", "style", "caption", "word"):
        assert {(qtype, "Yes"), (qtype, "No")} <= seen, qtype
    assert {a for t, a in seen if t == "count"} == {"1", "2", "3", "4"}
    for name, steps, mix in mtb.ALL_PHASES:
        assert steps > 0 and set(mix) <= set(mtb.QUESTION_TYPES), name
        assert not mix or sum(mix.values()) == pytest.approx(1.0), name


def test_answer_format_questions_keep_the_yes_no_truth_and_count_absent_shapes_as_zero(mtb):
    """``digit``: a generic yes/no question under a generic digit instruction (never the scoring
    one), answered 1 exactly where the same draws answer Yes; ``count0``: 0 for an absent shape;
    ``rate``: how much of the caption is shown, or the number of shapes or colours, on a 1-5
    scale, every level used."""
    rng = np.random.default_rng(5)
    counts, rates, kinds = set(), set(), set()
    for i in range(200):
        item = mtb.draw_item(rng)
        q, a = mtb.generic_question(item, np.random.default_rng(i), "digit")
        inner = np.random.default_rng(i)
        qtype = str(inner.choice(mtb.YES_NO_TYPES))
        q0, a0 = mtb.generic_question(item, inner, qtype)
        assert q.split("\n", 1)[1] == q0 and q.split("\n", 1)[0] in mtb.DIGIT_INSTRUCTIONS
        assert a == {"Yes": "1", "No": "0"}[a0]
        q, a = mtb.generic_question(item, rng, "count0")
        shape = next(s for s in mtb.SHAPES if f" {mtb.PLURAL[s]} " in q)
        drawn = sum(o.count for o in item["drawn"].objects if o.shape == shape)
        assert a == str(min(drawn, mtb.demo_scene.MAX_RENDERED_COUNT)) and a in mtb.answer_set("count0")
        counts.add(a)
        q, a = mtb.generic_question(item, rng, "rate")
        objs = item["drawn"].objects
        if q.startswith(mtb.RATE_QUESTIONS["caption"]):
            # How much of the caption: from the drawn scene's truth, the caption question last.
            assert q.split("\n", 1)[1] == f'Does the image show "{item["prompt"].text}"?'
            shown = [e.clarity(item["drawn"]) >= 0.5 for e in item["prompt"].elements]
            assert a == str(1 + round(4 * sum(shown) / len(shown) + 1e-9))
            kinds.add("caption")
        else:
            n = (sum(o.count for o in objs) if q == mtb.RATE_QUESTIONS["shapes"]
                 else len({mtb.shown_color(o) for o in objs}))
            assert q in mtb.RATE_QUESTIONS.values() and a == str(min(max(n, 1), 5))
            kinds.add(q)
        rates.add(a)
    assert "0" in counts and len(counts) >= 3
    assert rates == set(mtb.answer_set("rate")) and len(kinds) == 3


def test_captions_are_judged_by_the_drawn_scene(mtb):
    rng = np.random.default_rng(3)
    for _ in range(200):
        item = mtb.draw_item(rng)
        shown = mtb.whole_caption_shown(item["prompt"], item["drawn"])
        assert shown == all(e.clarity(item["drawn"]) >= 0.5 for e in item["prompt"].elements)
        text, ok = mtb.partial_caption(item["prompt"], item["drawn"], rng)
        assert text and isinstance(ok, bool)


def test_word_captions_ask_vqascore_questions_judged_by_the_drawn_scene(mtb):
    """A bare-word caption is VQAScore's question about one word of a prompt, and its answer is
    whether some drawn shape, group or the background has that word."""
    from tokenfocus.demo import scene as S
    from tokenfocus.prompts import vqascore_question

    singular = {v: k for k, v in S.PLURAL.items()}
    counts = {v: k for k, v in S.COUNT_WORDS.items()}
    rng = np.random.default_rng(4)
    kinds = set()
    for _ in range(400):
        scene = mtb.draw_item(rng)["drawn"]
        q, a = mtb.word_caption(scene, rng)
        word = q.split('"')[1]
        assert q == vqascore_question(word)
        objs = scene.objects
        if word in S.SHAPES or word in singular:
            kind, truth = "shape", any(o.shape == singular.get(word, word) for o in objs)
        elif word in S.COLORS:
            kind, truth = "color", any(S.shown_color(o) == word for o in objs)
        elif word in S.TEXTURES:
            kind, truth = "texture", any(o.texture == word for o in objs)
        elif word in S.STYLES:
            kind, truth = "style", scene.style == word
        elif word in S.BACKGROUNDS:
            kind, truth = "background", scene.background == word
        elif word in S.SIZES:
            kind, truth = "size", any(o.size == word for o in objs)
        else:
            kind, truth = "count", any(min(o.count, 4) == counts[word] for o in objs)
        kinds.add((kind, truth))
        assert a == ("Yes" if truth else "No"), (q, a, scene)
    assert kinds == {(k, t) for k in mtb.WORD_KINDS for t in (True, False)}


def test_cells_show_what_covers_them_and_instance_centres(mtb):
    scene = Scene("snow", [SceneObject("square", "red", 1, size="big"), SceneObject("star", "blue", 3)])
    _, words = mtb.render_with_regions(scene, 0)
    assert len(words) == mtb.GRID * mtb.GRID and all(w[0] == "snow" for w in words)
    flat = [w for cell in words for w in cell]
    assert flat.count(mtb.CENTRE_WORD) == 4           # one square and three stars
    assert "red" in flat and "square" in flat and "blue" in flat and "star" in flat
    assert not any({"red", "blue"} <= set(cell) and "square" not in cell and "star" not in cell for cell in words)


def test_scene_words_add_the_whole_scene_to_every_cell(mtb):
    scene = Scene("snow", [SceneObject("square", "red", 1, size="big"), SceneObject("star", "blue", 1)])
    _, words = mtb.render_with_regions(scene, 0)
    item = {"words": words}

    class Adapter:   # what DenseTargets reads from an adapter
        tokenizer = mtb.train_tokenizer(mtb.build_corpus(0), "internvl")
        model = type("M", (), {"get_output_embeddings": lambda self: None})()

    plain, scene_t = mtb.DenseTargets(Adapter()).target([item]), mtb.DenseTargets(Adapter(), 0.5).target([item])
    index = mtb.DenseTargets(Adapter()).index
    red_cells = [k for k, cell in enumerate(words) if "red" in cell]
    other = next(k for k, cell in enumerate(words) if "red" not in cell)
    assert red_cells and (scene_t[0, red_cells, index["red"]] == 1).all()
    assert plain[0, other, index["red"]] == 0 and scene_t[0, other, index["red"]] == 0.5
    assert scene_t[0, other, index["heart"]] == 0 and scene_t[0, other, index["snow"]] == 1
    assert torch.equal(torch.maximum(plain, scene_t), scene_t)


def test_a_build_continues_from_its_last_finished_stage(mtb, tmp_path):
    """A re-run loads the finished stage's saved weights and ends where an uninterrupted run ends
    (the second stage starts a fresh optimiser, so the weights are all it carries over)."""
    args = mtb.argparse.Namespace(phase_scale=1e-4, batch_size=2, lr=1e-3, eval_per_type=1, eval_scenes=2)
    corpus = mtb.build_corpus(0)
    torch.set_num_threads(1)
    mtb.make_family("internvl", tmp_path / "a", 5, corpus, args)
    whole = load_adapter("internvl", str(tmp_path / "a" / mtb.FAMILIES["internvl"])).model.state_dict()
    shutil.copytree(tmp_path / "a" / ".work", tmp_path / "b" / ".work")
    work = tmp_path / "b" / ".work" / "internvl"
    for stage in mtb.STAGES[1:]:   # stopped before the second stage finished
        shutil.rmtree(work / stage.name)
        (work / f"state-{stage.name}.pt").unlink()
    card = mtb.make_family("internvl", tmp_path / "b", 5, corpus, args)
    again = load_adapter("internvl", str(tmp_path / "b" / mtb.FAMILIES["internvl"])).model.state_dict()
    for k in whole:
        torch.testing.assert_close(again[k], whole[k], atol=1e-6, rtol=1e-5)
    assert [s["name"] for s in card["pretrain"]["stages"]] == [s.name for s in mtb.STAGES]
    assert len(card["pretrain"]["after_phase"]) == len(mtb.ALL_PHASES)


def test_a_published_base_gains_a_new_stage_without_redoing_its_own(mtb, tmp_path, monkeypatch):
    """--from-published: a base built before the last stage existed continues from its published
    weights and card, and ends where a build of every stage from the start ends."""
    args = mtb.argparse.Namespace(phase_scale=1e-4, batch_size=2, lr=1e-3, eval_per_type=1, eval_scenes=2,
                                  from_published=False)
    corpus = mtb.build_corpus(0)
    torch.set_num_threads(1)
    name = mtb.FAMILIES["internvl"]
    mtb.make_family("internvl", tmp_path / "whole", 5, corpus, args)
    with monkeypatch.context() as m:
        m.setattr(mtb, "STAGES", mtb.STAGES[:-1])
        mtb.make_family("internvl", tmp_path / "old", 5, corpus, args)
    shutil.copytree(tmp_path / "old" / name, tmp_path / "new" / name)   # what a checkout holds
    args.from_published = True
    card = mtb.make_family("internvl", tmp_path / "new", 5, corpus, args)
    whole = load_adapter("internvl", str(tmp_path / "whole" / name)).model.state_dict()
    again = load_adapter("internvl", str(tmp_path / "new" / name)).model.state_dict()
    for k in whole:
        torch.testing.assert_close(again[k], whole[k], atol=1e-6, rtol=1e-5)
    assert [s["name"] for s in card["pretrain"]["stages"]] == [s.name for s in mtb.STAGES]
    assert [p["name"] for p in card["pretrain"]["phases"]] == [n for n, _, _ in mtb.ALL_PHASES]
    assert len(card["pretrain"]["after_phase"]) == len(mtb.ALL_PHASES)


@pytest.mark.parametrize("extra", [{}, {"presence": 1.0, "easy_steps": 2, "easy_floor": 0.5},
                                   {"presence": 1.0, "presence_words": True}],
                         ids=["dense", "presence+easy", "presence-words"])
def test_pretraining_resumes_where_it_stopped(mtb, tmp_path, extra):
    """Stopped after its first phase and run again, pre-training ends at the weights of an
    uninterrupted run (with the presence head, linear or through the word embeddings, and the
    easy-first curriculum too)."""
    corpus = mtb.build_corpus(0)
    tok = mtb.train_tokenizer(corpus, "internvl")
    torch.manual_seed(0)
    model, processor, pconf = mtb.BUILDERS["internvl"](tok)
    mtb.save_checkpoint(tmp_path / "init", model, tok, processor, pconf)
    phases = (("vision", 2, {}), ("vqa", 2, {"color": 0.5, "caption": 0.5}))

    def run(state, stop_after_first=False):
        adapter = load_adapter("internvl", str(tmp_path / "init"))

        def end(name):
            if stop_after_first and name == "vision":
                raise KeyboardInterrupt
            return {"phase": name}

        mtb.pretrain(adapter, phases=phases, batch_size=2, lr=1e-3, seed=5, state_path=state, on_phase_end=end,
                     **extra)
        return {k: v.clone() for k, v in adapter.model.state_dict().items()}

    whole = run(tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", stop_after_first=True)
    stopped = torch.load(tmp_path / "b.pt", weights_only=False)
    assert stopped["step"] == 2 and (stopped["presence_head"] is not None) == bool(extra)
    resumed = run(tmp_path / "b.pt")
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], atol=1e-6, rtol=1e-5)


def test_committed_cards_record_what_the_bases_learned(mtb):
    for folder in mtb.FAMILIES.values():
        card = json.loads((ROOT / "input" / "pretrained" / folder / "card.json").read_text())
        assert card["parameters"]["total"] <= 10_000_000 and card["checkpoint_bytes"] <= 20 * 2 ** 20
        pre = card["pretrain"]
        assert [(p["name"], p["steps"]) for p in pre["phases"]] == [(n, k) for n, k, _ in mtb.ALL_PHASES]
        final = pre["after_phase"][-1]["generic"]
        assert set(final) == set(mtb.QUESTION_TYPES) == set(pre["majority_baseline"])
        for qtype in LEARNED:
            assert final[qtype] > pre["majority_baseline"][qtype] + 0.1, (folder, qtype)


@pytest.mark.parametrize("family", sorted(["qwen2_5_vl", "internvl"]))
def test_bases_answer_fresh_generic_questions_above_the_majority(mtb, family):
    """Loaded through from_pretrained, on scenes no pre-training step drew."""
    torch.set_num_threads(1)
    adapter = load_adapter(family, str(ROOT / "input" / "pretrained" / mtb.FAMILIES[family]))
    examples = [e for e in mtb.held_out_examples(100, seed=987) if e[3] in ("color", "color_of", "background", "caption")]
    acc = mtb.evaluate(adapter, examples)
    majority = mtb.majority_baseline(examples)
    for qtype in ("color", "color_of", "background", "caption"):
        assert acc[qtype] > majority[qtype] + 0.1, (qtype, acc[qtype], majority[qtype])


def test_aligned_layout_gives_each_shape_a_token_cell_of_its_own(mtb):
    """render_scene(aligned=True) (the vision probe's option) puts every drawn shape's centre in a
    cell of its own; the default layout stays as it was."""
    import numpy as np

    from tokenfocus.demo.render import render_scene

    rng = np.random.default_rng(5)
    for _ in range(40):
        item = mtb.draw_item(rng, aligned=True)
        shapes = sum(o.count for o in item["drawn"].objects if not o.partial)
        centres = sum(mtb.CENTRE_WORD in words for words in item["words"])
        assert centres >= shapes, (centres, shapes)
        scene = item["drawn"]
        default = np.asarray(render_scene(scene, 112, np.random.default_rng(1)))
        assert np.array_equal(default, np.asarray(render_scene(scene, 112, np.random.default_rng(1), aligned=False)))
        assert not np.array_equal(default, np.asarray(render_scene(scene, 112, np.random.default_rng(1), aligned=True)))


def test_easy_scenes_are_what_the_curriculum_says(mtb, monkeypatch):
    """The easy pictures the shapes stage and probe_vision start on: the asked number of groups,
    one plain shape each, of the asked size, distinct shapes and colours, no style, drawn as asked;
    probe_vision's --easy 1 draws only those, --easy 0 the general mix."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = mtb.easy_scene(rng, groups=3, size="medium")
        assert len(scene.objects) == 3 and scene.style == "none" and not scene.relations
        assert {(o.count, o.size, o.texture, o.distorted, o.partial, o.tint) for o in scene.objects} == \
            {(1, "medium", "plain", False, False, None)}
        assert len({o.shape for o in scene.objects}) == 3 and len({o.color for o in scene.objects}) == 3
    for _ in range(10):   # drawn as asked: every element of its prompt shown
        item = mtb.draw_item(rng, easy=True)
        assert len(item["drawn"].objects) == 1 and item["drawn"].objects[0].size == "big"
        assert all(e.clarity(item["drawn"]) >= 0.5 for e in item["prompt"].elements)
    monkeypatch.syspath_prepend(str(ROOT / "src" / "tools"))
    spec = importlib.util.spec_from_file_location("probe_vision", ROOT / "src" / "tools" / "probe_vision.py")
    pv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pv)
    monkeypatch.setitem(pv.EASY, "groups", 3)
    shapes = [i for i, (kind, _) in enumerate(pv.LABELS) if kind == "shape"]
    assert {pv.draw(rng, 112, easy=1.0)[1][shapes].sum() for _ in range(20)} == {3.0}
    # The general mix: any number of shapes (groups dropped or added by the generator).
    assert len({pv.draw(rng, 112, easy=0.0)[1][shapes].sum() for _ in range(60)}) > 1


def test_presence_target_names_what_the_drawn_scene_shows(mtb):
    scene = Scene("desert", [SceneObject("star", "red", 2, texture="striped"), SceneObject("heart", "blue")],
                  style="sketch")
    t = mtb.presence_target([{"drawn": scene}])[0]
    on = {label for label, v in zip(mtb.PRESENCE_LABELS, t.tolist()) if v}
    assert on == {("shape", "star"), ("shape", "heart"), ("color", "red"), ("color", "blue"),
                  ("background", "desert"), ("texture", "striped"), ("style", "sketch")}


def test_presence_read_through_the_word_embeddings_is_the_best_token_match(mtb):
    """PresenceHead(words=...): a label's logit is the max over the image tokens of the token's
    score for the label's word (scale 1, bias 0 at the start), so a token that is the word
    "star" makes "star" the shape the head reads."""
    torch.manual_seed(0)
    words = mtb.region_words()
    emb = torch.nn.Embedding(len(words) + 3, 16)
    dense = SimpleNamespace(ids=torch.arange(3, len(words) + 3), index={w: i for i, w in enumerate(words)}, head=emb)
    head = mtb.PresenceHead(16, dense)
    features = torch.randn(1, 49, 16) * 0.01
    star = dense.ids[dense.index["star"]]
    features[0, 7] = emb.weight[star].detach() * 10
    logits = head.logits(features)[0]
    expected = (features[0] @ emb.weight[dense.ids[[dense.index[w] for _, w in mtb.PRESENCE_LABELS]]].T).amax(0)
    torch.testing.assert_close(logits, expected.float())
    shapes = [i for i, (kind, _) in enumerate(mtb.PRESENCE_LABELS) if kind == "shape"]
    assert mtb.PRESENCE_LABELS[shapes[int(logits[shapes].argmax())]] == ("shape", "star")
    assert set(dict(head.named_parameters())) == {"scale", "bias"}   # the embeddings stay the model's
    with pytest.raises(ValueError, match="presence > 0"):   # the read-out without a loss weight would do nothing
        mtb.pretrain(None, phases=(), batch_size=1, lr=1e-3, seed=0, state_path=Path("unused.pt"), presence_words=True)
