"""The demo dataset: grammar, renderer, generators, annotators and the written files."""
import ast
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenfocus.data import load_records
from tokenfocus.demo import build
from tokenfocus.demo.annotators import annotate, expected_labels, make_pool, truth_labels, truth_total
from tokenfocus.demo.build import DemoSpec, make_demo_dataset
from tokenfocus.demo.generators import GENERATOR_NAMES, GENERATORS, generate
from tokenfocus.demo.render import render_scene
from tokenfocus.demo.prompt import WORD_RE, demo_vocabulary, write_prompt
from tokenfocus.demo.scene import Relation, Scene, SceneObject, sample_scene

TINY = DemoSpec(seed=7, n_train_prompts=30, n_test_prompts=16, images_per_prompt=3, image_size=64,
                six_annotator_rate=0.2, string_element_score_rate=0.3, trailing_space_rate=0.15,
                alt_case_rate=0.3, repeat_generator_rate=0.2, ceiling_simulations=128)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "tiny"
    summary = make_demo_dataset(out, TINY)
    return out, summary


def _load(out: Path, name: str):
    return json.loads((out / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- written dataset

def test_same_seed_same_bytes(tiny, tmp_path):
    out, _ = tiny
    again = make_demo_dataset(tmp_path / "again", TINY)
    assert not again["skipped"]
    assert _tree_digest(out) == _tree_digest(tmp_path / "again")
    other = make_demo_dataset(tmp_path / "other", DemoSpec(**{**TINY.__dict__, "seed": 8}))
    assert other["counts"]["train_records"] == again["counts"]["train_records"]
    assert (tmp_path / "other" / "train_list.json").read_bytes() != (out / "train_list.json").read_bytes()


def test_train_records_have_the_raw_evalmuse_form(tiny):
    out, _ = tiny
    train = _load(out, "train_list.json")
    assert len(train) == TINY.n_train_prompts * TINY.images_per_prompt
    n_string, n_six, keys, types = 0, 0, [], set()
    for rec in train:
        assert list(rec) == ["prompt_id", "prompt", "type", "img_path", "total_score", "element_score",
                             "promt_meaningless", "split_confidence", "attribute_confidence",
                             "fidelity_label"]
        model, name = rec["img_path"].split("/")
        assert model in GENERATOR_NAMES
        assert re.fullmatch(rf"{rec['prompt_id']}(_\d)?\.png", name)
        n = len(rec["total_score"])
        assert n in (3, 6) and all(isinstance(t, int) and 1 <= t <= 5 for t in rec["total_score"])
        es = rec["element_score"]
        if isinstance(es, str):
            n_string += 1
            es = ast.literal_eval(es)
        assert es and all(len(v) == n and set(v) <= {0, 1} for v in es.values())
        for f in ("promt_meaningless", "split_confidence", "attribute_confidence", "fidelity_label"):
            assert len(rec[f]) == n
        n_six += n == 6
        keys += list(es)
        types.add(rec["type"])
        with Image.open(out / "images" / rec["img_path"]) as im:
            assert im.size == (TINY.image_size, TINY.image_size) and im.mode == "RGB"
    assert n_string > 0 and n_six > 0 and types == {"real", "synthetic"}
    assert any(k.endswith(" ") for k in keys), "no trailing-space element key"
    assert any(k.rstrip().endswith("(Color)") for k in keys), "no capitalised category"
    assert any(re.search(r"/\d+_1\.png$", r["img_path"]) for r in train), "no '_1' image name"
    assert all(re.fullmatch(r".+ \([^()]+\) ?", k) for k in keys)


def test_test_records_have_the_final_phase_form_and_eval_covers_them(tiny):
    out, _ = tiny
    test, truth = _load(out, "test.json"), _load(out, "eval.json")
    assert len(test) == TINY.n_test_prompts * TINY.images_per_prompt
    assert [r["img_path"] for r in test] == [f"img_{i:04d}.png" for i in range(len(test))]
    for rec in test:
        assert "type" not in rec and rec["total_score"] is None
        assert rec["prompt_id"].startswith("val_")
        assert all(v is None for v in rec["element_score"].values())
        for f in ("promt_meaningless", "split_confidence", "attribute_confidence"):
            assert isinstance(rec[f], float)
        assert (out / "images" / rec["img_path"]).is_file()
    assert [r["img_path"] for r in truth] == [r["img_path"] for r in test]
    for t, r in zip(truth, test):
        assert list(t["element_score"]) == list(r["element_score"])  # byte-exact, same order
        assert 1.0 <= t["total_score"] <= 5.0
    # Test images sit at the top of images/, renamed; training images under their generator.
    assert {p.name for p in (out / "images").iterdir() if p.is_file()} == {r["img_path"] for r in test}


def test_test_prompts_are_unseen_in_training(tiny):
    out, _ = tiny
    train_prompts = {r["prompt"] for r in _load(out, "train_list.json")}
    test_prompts = {r["prompt"] for r in _load(out, "test.json")}
    assert len(test_prompts) == TINY.n_test_prompts
    assert not train_prompts & test_prompts


def test_the_project_loader_reads_both_files(tiny):
    out, _ = tiny
    train = load_records(out / "train_list.json")
    test = load_records(out / "test.json")
    assert set(train["n_annotators"]) == {3, 6}
    assert test["type"].isna().all() and test["t2i_model"].isna().all()
    assert test["total_score"].isna().all()


def test_noise_ceiling_is_well_above_the_prior(tiny):
    out, summary = tiny
    stored = _load(out, "noise_ceiling.json")
    assert stored["noise_ceiling"] == summary["noise_ceiling"]
    assert stored["spec"] == TINY.__dict__
    assert summary["noise_ceiling"]["final"] - summary["prior"]["final"] >= 0.15
    assert 0.8 < summary["noise_ceiling"]["acc"] <= 1.0
    assert set(summary["perfect_vision_acc_by_kind"]) >= {"object", "color", "count"}


def test_scene_truth_sits_between_the_prior_and_the_ceiling(tiny):
    _, summary = tiny
    truth, prior, ceiling = summary["scene_truth"], summary["prior"], summary["noise_ceiling"]
    assert set(truth) == {"srcc", "plcc", "acc", "final"}
    # The truth alone sees the image perfectly: far above the prompt-only prior, and no closer to
    # the annotators than a predictor that also knows how they vote.
    assert truth["final"] - prior["final"] >= 0.15
    assert truth["acc"] <= ceiling["acc"] + 0.02
    assert "scene truth (no annotators)" in build.format_summary({**summary, "out_dir": "x", "skipped": True})


def test_a_dataset_of_an_older_format_is_rebuilt(tiny, tmp_path):
    out = tmp_path / "d"
    make_demo_dataset(out, TINY)
    stored = _load(out, "noise_ceiling.json")
    assert stored["format"] == build.FORMAT
    (out / "noise_ceiling.json").write_text(json.dumps({**stored, "format": build.FORMAT - 1}), encoding="utf-8")
    assert not build.is_complete(out, TINY)
    assert not make_demo_dataset(out, TINY)["skipped"]
    assert _tree_digest(out) == _tree_digest(tiny[0])


def test_rerun_skips_and_force_rebuilds(tiny, tmp_path):
    out = tmp_path / "d"
    make_demo_dataset(out, TINY)
    stamp = (out / "train_list.json").stat().st_mtime_ns
    assert make_demo_dataset(out, TINY)["skipped"]
    assert (out / "train_list.json").stat().st_mtime_ns == stamp
    assert not make_demo_dataset(out, TINY, force=True)["skipped"]
    assert _tree_digest(out) == _tree_digest(tiny[0])


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(spec, out):
        (out / "train_list.json").write_text("[")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_build", boom)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path / "d", TINY)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="does not hold a demo dataset"):
        make_demo_dataset(tmp_path / "d", TINY)
    assert (tmp_path / "d" / "mine.txt").read_text() == "keep"


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="images_per_prompt"):
        DemoSpec(images_per_prompt=99)


# --------------------------------------------------------------------------- grammar and checks

def _two_groups(**kw) -> Scene:
    scene = Scene("desert", [SceneObject("circle", "red", 2), SceneObject("square", "blue", 1)],
                  layout="row", relations=[Relation(0, "left of", 1)])
    for k, v in kw.items():
        setattr(scene, k, v)
    return scene


def test_element_checks_follow_the_rendered_scene():
    rng = np.random.default_rng(0)
    intended = _two_groups()
    prompt = None
    for _ in range(50):  # colour and location are stated only sometimes
        prompt = write_prompt(intended, rng)
        kinds = {e.kind for e in prompt.elements}
        if {"object", "color", "count", "spatial", "location"} <= kinds:
            break
    by_kind = {e.kind: e for e in prompt.elements if e.kind != "object" and e.shape in ("circle", "")}
    assert all(e.clarity(intended) == 1.0 for e in prompt.elements)

    swapped = intended.copy()
    swapped.objects[0].color, swapped.objects[1].color = "blue", "red"
    assert by_kind["color"].clarity(swapped) == 0.0

    reversed_ = intended.copy()
    reversed_.objects.reverse()
    assert by_kind["spatial"].clarity(reversed_) == 0.0
    turned = intended.copy()
    turned.layout = "column"
    assert by_kind["spatial"].clarity(turned) == 0.0

    miscounted = intended.copy()
    miscounted.objects[0].count = 3
    assert by_kind["count"].clarity(miscounted) == 0.0
    cut = intended.copy()
    cut.objects[0].partial = True
    assert 0.0 < by_kind["count"].clarity(cut) < 1.0

    near = intended.copy()
    near.objects[0].tint, near.objects[0].tint_amount = "orange", 0.5
    assert by_kind["color"].clarity(near) == pytest.approx(0.5)

    elsewhere = intended.copy()
    elsewhere.background = "forest"
    assert by_kind["location"].clarity(elsewhere) == 0.0


def test_prompts_use_only_vocabulary_words_and_unique_keys():
    vocab = set(demo_vocabulary())
    rng = np.random.default_rng(1)
    for i in range(300):
        scene = sample_scene(rng)
        assert 1 <= len(scene.objects) <= 3
        prompt = write_prompt(scene, rng, "real" if i % 2 else "synthetic", 0.2, 0.3)
        words = WORD_RE.findall(prompt.text) + [w for e in prompt.elements for w in WORD_RE.findall(e.key)]
        assert set(words) <= vocab, set(words) - vocab
        stripped = [e.key.rstrip().lower() for e in prompt.elements]
        assert len(stripped) == len(set(stripped))
    for field in ("circle", "red", "big", "medium", "plain", "striped", "desert", "none"):
        assert field in vocab


def test_write_prompt_rejects_unknown_type():
    with pytest.raises(ValueError, match="prompt_type"):
        write_prompt(_two_groups(), np.random.default_rng(0), "user")


# --------------------------------------------------------------------------- renderer

def test_render_is_deterministic_and_shows_the_scene():
    scene = Scene("snow", [SceneObject("square", "red", 1, "big")])
    a = render_scene(scene, 112, np.random.default_rng(3))
    b = render_scene(scene, 112, np.random.default_rng(3))
    assert a.size == (112, 112) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    px = np.asarray(a).reshape(-1, 3).astype(int)
    red = (px[:, 0] > 180) & (px[:, 1] < 80) & (px[:, 2] < 80)
    assert 0.08 < red.mean() < 0.3  # one big square, about a third of the side
    blue = render_scene(Scene("snow", [SceneObject("square", "blue", 1, "big")]), 112, np.random.default_rng(3))
    assert blue.tobytes() != a.tobytes()
    for style in ("pixel art", "watercolor", "sketch", "Van Gogh"):
        styled = render_scene(Scene("snow", scene.objects, style=style), 64)
        assert styled.size == (64, 64) and styled.tobytes() != render_scene(Scene("snow", scene.objects), 64).tobytes()


def test_render_order_follows_the_layout():
    scene = Scene("snow", [SceneObject("circle", "red", 1, "big"), SceneObject("circle", "blue", 1, "big")])
    px = np.asarray(render_scene(scene, 112)).astype(int)
    red_x = np.nonzero((px[..., 0] > 180) & (px[..., 2] < 90))[1].mean()
    blue_x = np.nonzero((px[..., 2] > 180) & (px[..., 0] < 90))[1].mean()
    assert red_x < blue_x


def test_snap_puts_every_shape_on_the_patch_grid():
    """render_scene(snap=8) (the vision probe's option): each shape's box (a circle fills it) has
    its size and corners on multiples of 8 px; without it the layout is unchanged."""
    for seed in range(6):
        for count, size in ((1, "big"), (2, "medium"), (3, "small")):
            scene = Scene("snow", [SceneObject("circle", "red", count, size)])
            px = np.asarray(render_scene(scene, 112, np.random.default_rng(seed), snap=8)).astype(int)
            red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
            for axis in (0, 1):
                covered = np.nonzero(red.any(axis=axis))[0]
                starts = covered[np.r_[True, np.diff(covered) > 1]]
                ends = covered[np.r_[np.diff(covered) > 1, True]] + 1
                assert (starts % 8 == 0).all() and (ends % 8 == 0).all(), (seed, count, size, starts, ends)
            plain = render_scene(scene, 112, np.random.default_rng(seed))
            assert plain.tobytes() == render_scene(scene, 112, np.random.default_rng(seed), snap=0).tobytes()


# --------------------------------------------------------------------------- generators, annotators

def _error_rate(name: str, check, n: int = 400) -> float:
    rng = np.random.default_rng(5)
    errors = 0
    for _ in range(n):
        scene = sample_scene(rng)
        errors += check(scene, generate(scene, name, rng))
    return errors / n


def test_generators_have_distinct_weaknesses():
    assert len(GENERATORS) >= 10 and len(set(GENERATOR_NAMES)) == len(GENERATORS)
    profiles = {tuple(vars(g).values())[1:] for g in GENERATORS}
    assert len(profiles) == len(GENERATORS)

    def miscount(a, b):
        return sorted(o.count for o in a.objects) != sorted(o.count for o in b.objects)

    def misbind(a, b):
        return {(o.shape, o.color) for o in a.objects} != {(o.shape, o.color) for o in b.objects}

    def misplace(a, b):
        return len(a.objects) > 1 and ([o.shape for o in a.objects] != [o.shape for o in b.objects]
                                       or a.layout != b.layout)

    assert _error_rate("SDXL-Turbo", miscount) > 2 * _error_rate("Flux-dev", miscount)
    assert _error_rate("SDXL", misbind) > 2 * _error_rate("Flux-dev", misbind)
    assert _error_rate("PixArt-Sigma", misplace) > 2 * _error_rate("Flux-dev", misplace)


def test_generate_leaves_the_intended_scene_alone():
    rng = np.random.default_rng(2)
    scene = sample_scene(rng)
    before = repr(scene)
    for name in GENERATOR_NAMES:
        generate(scene, name, rng)
    assert repr(scene) == before
    with pytest.raises(KeyError, match="unknown generator"):
        generate(scene, "Imagen-9", rng)


def test_truth_labels_follow_clarity_and_weigh_objects_double():
    rng = np.random.default_rng(4)
    intended = _two_groups()
    prompt = write_prompt(intended, rng)
    total, elements = truth_labels(prompt, intended)
    assert total == pytest.approx(5.0) and set(elements.values()) == {1.0}
    bad = intended.copy()
    bad.objects = [SceneObject("star", "green", 4)]
    bad.background = "forest"
    total_bad, elements_bad = truth_labels(prompt, bad)
    assert total_bad < 2.0 and sum(elements_bad.values()) < len(elements_bad) / 2
    assert truth_total(["object", "color"], [1.0, 0.0]) == pytest.approx(1 + 4 * 2 / 3)
    assert truth_total(["count", "color"], [1.0, 0.0]) == pytest.approx(3.0)


def test_annotators_agree_more_on_clear_images():
    rng = np.random.default_rng(4)
    pool = make_pool(rng)
    intended = _two_groups()
    prompt = write_prompt(intended, rng)
    good = annotate(prompt, intended, pool, 6, rng)
    assert len(good.total_score) == 6 and all(1 <= t <= 5 for t in good.total_score)
    assert all(len(v) == 6 for v in good.element_score.values())
    bad = intended.copy()
    bad.objects = [SceneObject("star", "green", 4)]
    bad.background = "forest"
    exp_good, el_good = expected_labels(prompt, intended, pool, rng, 256)
    exp_bad, el_bad = expected_labels(prompt, bad, pool, rng, 256)
    assert exp_good > 4.0 and exp_bad < 2.0
    assert min(el_good.values()) > 0.75 and max(el_bad.values()) < 0.25


# --------------------------------------------------------------------------- how annotators depart from the truth

def _element(prompt, kind):
    return next(e for e in prompt.elements if e.kind == kind)


def _prompt_for(scene, seed=0, tries=200):
    """A prompt of ``scene`` that states every colour and the count (write_prompt draws them)."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        p = write_prompt(scene, rng)
        if {"color", "count"} <= {e.kind for e in p.elements}:
            return p
    raise AssertionError("no prompt with colour and count elements")


def _votes(prompt, rendered, seed=1):
    return expected_labels(prompt, rendered, make_pool(np.random.default_rng(seed)), np.random.default_rng(2), 512)


def test_a_visible_defect_lowers_the_total_at_equal_element_truth():
    intended = _two_groups()
    prompt = _prompt_for(intended)
    distorted = intended.copy()
    for o in distorted.objects:
        o.distorted = True
    truth_clean, el_clean = truth_labels(prompt, intended)
    truth_bad, el_bad = truth_labels(prompt, distorted)
    assert el_clean == el_bad                       # every element still counts as shown
    assert _votes(prompt, distorted)[0] < _votes(prompt, intended)[0] - 0.8


def test_an_unrequested_object_and_clutter_lower_the_total():
    intended = _two_groups()
    prompt = _prompt_for(intended)
    extra = intended.copy()
    extra.objects.append(SceneObject("heart", "pink", 3))
    assert truth_labels(prompt, extra)[1] == truth_labels(prompt, intended)[1]
    assert _votes(prompt, extra)[0] < _votes(prompt, intended)[0] - 0.4


def test_near_miss_colours_are_often_accepted():
    intended = _two_groups(background="snow")   # orange would blend into the desert
    prompt = _prompt_for(intended)
    key = next(e.key for e in prompt.elements if e.kind == "color" and e.shape == "circle")
    tinted = intended.copy()
    tinted.objects[0].tint, tinted.objects[0].tint_amount = "orange", 0.6
    assert truth_labels(prompt, tinted)[1][key] == 0.0      # the truth says: not red
    assert _votes(prompt, tinted)[1][key] > 0.5             # most people still call it red


def test_off_by_one_counts_of_three_or_four_pass_small_counts_do_not():
    three = Scene("snow", [SceneObject("star", "red", 3)])
    prompt3 = _prompt_for(three)
    four = three.copy()
    four.objects[0].count = 4
    key3 = _element(prompt3, "count").key
    assert truth_labels(prompt3, four)[1][key3] == 0.0 and _votes(prompt3, four)[1][key3] > 0.35
    one = Scene("snow", [SceneObject("star", "red", 2)])
    prompt2 = _prompt_for(one)
    drawn = one.copy()
    drawn.objects[0].count = 1
    assert _votes(prompt2, drawn)[1][_element(prompt2, "count").key] < 0.2


def test_small_and_low_contrast_objects_are_missed():
    medium = Scene("snow", [SceneObject("triangle", "red", 1)])
    prompt = _prompt_for(medium)
    key = _element(prompt, "object").key
    small = medium.copy()
    small.objects[0].size = "small"
    hidden = Scene("desert", [SceneObject("triangle", "yellow", 1)])
    prompt_hidden = _prompt_for(hidden)
    seen = _votes(prompt, medium)[1][key]
    assert truth_labels(prompt, small)[1][key] == 1.0
    assert _votes(prompt, small)[1][key] < seen - 0.15
    assert _votes(prompt_hidden, hidden)[1][_element(prompt_hidden, "object").key] < seen - 0.15
