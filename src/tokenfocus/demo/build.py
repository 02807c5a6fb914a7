"""Write the demo dataset: EvalMuse-format files, images, and the noise ceiling.

Layout of ``out_dir``: ``train_list.json`` (raw per-annotator labels), ``test.json`` (final-phase
form), ``eval.json`` (the hidden test truth, averaged), ``images/`` and ``noise_ceiling.json``
(the score of a predictor that knows each test image's true rendered scene, that of the scene's
truth alone (what the tiny bases are pre-trained on), the prior baseline's score, and the spec
and ``FORMAT`` that made the data). Everything follows from ``DemoSpec``: the same spec
gives the same bytes.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .annotators import Annotation, annotate, expected_labels, make_pool, truth_labels
from .generators import GENERATORS, generate
from .render import render_scene
from .prompt import KINDS, Prompt, write_prompt
from .scene import Scene, sample_scene

TRAIN_FILE = "train_list.json"
TEST_FILE = "test.json"
EVAL_FILE = "eval.json"
CEILING_FILE = "noise_ceiling.json"
IMAGE_DIR = "images"
META_FIELDS = ("promt_meaningless", "split_confidence", "attribute_confidence")
# Raised whenever the simulation or the summary changes, so that a stored dataset made by an
# earlier version is rebuilt instead of kept.
FORMAT = 3
# The reference scores the summary holds, as (label, key), in the order they are shown.
REFERENCES = (("noise ceiling", "noise_ceiling"), ("scene truth (no annotators)", "scene_truth"),
              ("prior (prompt only)", "prior"))


@dataclass
class DemoSpec:
    seed: int = 1234
    n_train_prompts: int = 500
    n_test_prompts: int = 100
    images_per_prompt: int = 4
    image_size: int = 112
    six_annotator_rate: float = 0.06        # pairs labelled by 6 annotators instead of 3
    string_element_score_rate: float = 0.1  # train records whose element_score is a dict literal string
    trailing_space_rate: float = 0.04       # element keys ending with a space
    alt_case_rate: float = 0.1              # prompts keyed in the "Red (Color)" dialect
    real_prompt_rate: float = 0.5           # user-like prompts (type "real") vs templated ("synthetic")
    repeat_generator_rate: float = 0.05     # prompts drawn twice by one generator ("<id>_1.png")
    n_annotator_pool: int = 24
    ceiling_simulations: int = 512          # Monte Carlo draws for the expected total

    def __post_init__(self) -> None:
        if self.n_train_prompts < 1 or self.n_test_prompts < 1:
            raise ValueError("DemoSpec: n_train_prompts and n_test_prompts must be >= 1")
        if not 1 <= self.images_per_prompt <= len(GENERATORS):
            raise ValueError(f"DemoSpec: images_per_prompt must be in 1..{len(GENERATORS)}, "
                             f"got {self.images_per_prompt}")
        if self.image_size < 32:
            raise ValueError(f"DemoSpec: image_size must be >= 32, got {self.image_size}")
        for name in ("six_annotator_rate", "string_element_score_rate", "trailing_space_rate",
                     "alt_case_rate", "real_prompt_rate", "repeat_generator_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DemoSpec: {name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class _Pair:
    prompt_index: int
    prompt: Prompt
    generator: str
    img_path: str
    rendered: Scene
    labels: Annotation


def _rng(spec: DemoSpec, stream: int) -> np.random.Generator:
    # One independent stream per purpose, so e.g. the rendering jitter never shifts the labels.
    return np.random.default_rng([spec.seed, stream])


def _sample_prompts(spec: DemoSpec) -> list[tuple[Scene, Prompt]]:
    """Distinct prompt texts: the first n_train go to training, the rest to test (so never seen)."""
    rng = _rng(spec, 1)
    n = spec.n_train_prompts + spec.n_test_prompts
    out, seen = [], set()
    for _ in range(200 * n):
        scene = sample_scene(rng)
        kind = "real" if rng.random() < spec.real_prompt_rate else "synthetic"
        prompt = write_prompt(scene, rng, kind, spec.trailing_space_rate, spec.alt_case_rate)
        if prompt.text in seen:
            continue
        seen.add(prompt.text)
        out.append((scene, prompt))
        if len(out) == n:
            return out
    raise RuntimeError(f"could not draw {n} distinct prompts")


def _pairs(spec: DemoSpec, prompts: list[tuple[Scene, Prompt]]):
    """(prompt index, prompt, generator name, file stem) for every image, in a fixed order."""
    rng = _rng(spec, 2)
    for pi, (scene, prompt) in enumerate(prompts):
        picks = [GENERATORS[i].name for i in rng.choice(len(GENERATORS), spec.images_per_prompt, replace=False)]
        if spec.images_per_prompt > 1 and rng.random() < spec.repeat_generator_rate:
            picks[-1] = picks[0]
        stems: dict[str, int] = {}
        for gen in picks:
            k = stems.get(gen, 0)
            stems[gen] = k + 1
            yield pi, scene, prompt, gen, "" if k == 0 else f"_{k}"


def _simulate(spec: DemoSpec, prompts, out: Path) -> tuple[list[_Pair], object]:
    gen_rng, img_rng, ann_rng = _rng(spec, 3), _rng(spec, 4), _rng(spec, 5)
    pool = make_pool(_rng(spec, 6), spec.n_annotator_pool)
    pairs = []
    todo = list(_pairs(spec, prompts))
    (out / IMAGE_DIR).mkdir(parents=True)
    for pi, scene, prompt, gen, suffix in tqdm(todo, desc="demo images", unit="img", leave=False):
        rendered = generate(scene, gen, gen_rng)
        n_ann = 6 if ann_rng.random() < spec.six_annotator_rate else 3
        labels = annotate(prompt, rendered, pool, n_ann, ann_rng)
        image = render_scene(rendered, spec.image_size, img_rng)
        if pi < spec.n_train_prompts:
            img_path = f"{gen}/{pi:05d}{suffix}.png"
        else:
            img_path = f"_test/{len(pairs)}.png"  # renamed once the test set is shuffled
        path = out / IMAGE_DIR / img_path
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
        pairs.append(_Pair(pi, prompt, gen, img_path, rendered, labels))
    return pairs, pool


def _element_score(labels, as_string: bool):
    scores = {k: list(v) for k, v in labels.element_score.items()}
    return repr(scores) if as_string else scores


def _train_record(p: _Pair, as_string: bool) -> dict:
    lab = p.labels
    return {
        "prompt_id": f"{p.prompt_index:05d}",
        "prompt": p.prompt.text,
        "type": p.prompt.type,
        "img_path": p.img_path,
        "total_score": list(lab.total_score),
        "element_score": _element_score(lab, as_string),
        "promt_meaningless": list(lab.promt_meaningless),
        "split_confidence": list(lab.split_confidence),
        "attribute_confidence": list(lab.attribute_confidence),
        "fidelity_label": list(lab.fidelity_label),
    }


def _mean(values) -> float:
    return float(np.mean(values))


def _test_records(spec: DemoSpec, test_pairs: list[_Pair], out: Path):
    """Shuffle, rename to img_XXXX.png and split into (test.json records, eval.json records)."""
    order = _rng(spec, 7).permutation(len(test_pairs))
    prompt_ids: dict[int, str] = {}
    test, truth, shuffled = [], [], []
    for new, old in enumerate(order):
        p = test_pairs[int(old)]
        name = f"img_{new:04d}.png"
        (out / IMAGE_DIR / p.img_path).rename(out / IMAGE_DIR / name)
        p.img_path = name
        pid = prompt_ids.setdefault(p.prompt_index, f"val_{len(prompt_ids):04d}")
        lab = p.labels
        test.append({
            "prompt_id": pid,
            "prompt": p.prompt.text,
            "img_path": name,
            "total_score": None,
            "element_score": {k: None for k in lab.element_score},
            **{f: _mean(getattr(lab, f)) for f in META_FIELDS},
        })
        truth.append({
            "prompt": p.prompt.text,
            "img_path": name,
            "total_score": _mean(lab.total_score),
            "element_score": {k: _mean(v) for k, v in lab.element_score.items()},
        })
        shuffled.append(p)
    shutil.rmtree(out / IMAGE_DIR / "_test")
    return test, truth, shuffled


def _ceiling(spec: DemoSpec, pairs: list[_Pair], pool, truth: list[dict]) -> tuple[dict, dict]:
    """Score of the perfect-vision predictor, and its element accuracy per element kind."""
    from .. import metrics

    rng = _rng(spec, 8)
    preds, hits = [], {k: [] for k in KINDS}
    for p, t in zip(pairs, truth):
        total, elements = expected_labels(p.prompt, p.rendered, pool, rng, spec.ceiling_simulations)
        preds.append({"prompt": t["prompt"], "img_path": t["img_path"], "total_score": total,
                      "element_score": elements})
        for e in p.prompt.elements:
            hits[e.kind].append((elements[e.key] >= 0.5) == (t["element_score"][e.key] >= 0.5))
    per_kind = {k: {"acc": float(np.mean(v)), "n": len(v)} for k, v in hits.items() if v}
    return _metric_summary(metrics.score(truth, preds)), per_kind


def _scene_truth(pairs: list[_Pair], truth: list[dict]) -> dict:
    """Score of the scene's truth alone (``annotators.truth_labels``) against the annotators."""
    from .. import metrics

    preds = []
    for p, t in zip(pairs, truth):
        total, elements = truth_labels(p.prompt, p.rendered)
        preds.append({"prompt": t["prompt"], "img_path": t["img_path"], "total_score": total,
                      "element_score": elements})
    return _metric_summary(metrics.score(truth, preds))


def _prior(out: Path, truth: list[dict]) -> dict:
    """The prompt-only prior baseline (category positive rate; total from the element prior)."""
    from .. import metrics
    from ..baseline import fit_prior
    from ..data import element_frame, load_records

    train = load_records(out / TRAIN_FILE)
    test = load_records(out / TEST_FILE)
    model = fit_prior(train)
    elements = element_frame(test)
    elements["pred"] = model.element_pred(elements)
    by_img = elements.groupby("img_path", sort=False)
    el_pred = {img: dict(zip(g["element_key"], g["pred"].astype(float))) for img, g in by_img}
    totals = model.total_pred(test)
    preds = [{"prompt": r.prompt, "img_path": r.img_path, "total_score": float(tot),
              "element_score": el_pred.get(r.img_path, {})}
             for r, tot in zip(test.itertuples(index=False), totals)]
    return _metric_summary(metrics.score(truth, preds))


def _metric_summary(result: dict) -> dict:
    return {k: float(result[k]) for k in ("srcc", "plcc", "acc", "final")}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _build(spec: DemoSpec, out: Path) -> dict:
    prompts = _sample_prompts(spec)
    pairs, pool = _simulate(spec, prompts, out)
    train_pairs = [p for p in pairs if p.prompt_index < spec.n_train_prompts]
    test_pairs = [p for p in pairs if p.prompt_index >= spec.n_train_prompts]
    str_rng = _rng(spec, 9)
    train = [_train_record(p, bool(str_rng.random() < spec.string_element_score_rate)) for p in train_pairs]
    test, truth, test_pairs = _test_records(spec, test_pairs, out)
    _write_json(out / TRAIN_FILE, train)
    _write_json(out / TEST_FILE, test)
    _write_json(out / EVAL_FILE, truth)

    ceiling, per_kind = _ceiling(spec, test_pairs, pool, truth)
    scene_truth = _scene_truth(test_pairs, truth)
    prior = _prior(out, truth)
    n_elements = sum(len(p.prompt.elements) for p in pairs)
    summary = {
        "counts": {
            "train_prompts": spec.n_train_prompts,
            "test_prompts": spec.n_test_prompts,
            "train_records": len(train),
            "test_records": len(test),
            "elements_per_record": n_elements / len(pairs),
            "six_annotator_records": sum(len(p.labels.total_score) == 6 for p in pairs),
            "string_element_score_records": sum(isinstance(r["element_score"], str) for r in train),
            "generators": [g.name for g in GENERATORS],
        },
        "noise_ceiling": ceiling,
        "scene_truth": scene_truth,
        "prior": prior,
        "ceiling_minus_prior": ceiling["final"] - prior["final"],
        "perfect_vision_acc_by_kind": per_kind,
        "spec": asdict(spec),
        "format": FORMAT,
    }
    _write_json(out / CEILING_FILE, summary)
    return summary


def is_complete(out_dir: str | Path, spec: DemoSpec) -> bool:
    """Whether ``out_dir`` already holds the dataset this spec makes (with this ``FORMAT``)."""
    path = Path(out_dir) / CEILING_FILE
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return stored.get("format") == FORMAT and stored.get("spec") == asdict(spec) and all(
        (Path(out_dir) / f).exists() for f in (TRAIN_FILE, TEST_FILE, EVAL_FILE, IMAGE_DIR))


def make_demo_dataset(out_dir: str | Path, spec: DemoSpec | None = None, force: bool = False) -> dict:
    """Render the demo dataset into ``out_dir`` and return its summary (see ``noise_ceiling.json``).

    The data is built in a hidden sibling folder and renamed into place, so an interrupted run
    leaves either the previous dataset or none. A complete dataset made by the same spec is kept
    (``skipped: True``) unless ``force``.
    """
    spec = spec or DemoSpec()
    out = Path(out_dir)
    if not force and is_complete(out, spec):
        summary = json.loads((out / CEILING_FILE).read_text(encoding="utf-8"))
        return {**summary, "out_dir": str(out), "skipped": True, "seconds": 0.0}
    if out.exists() and not (out / CEILING_FILE).exists() and any(
            not p.name.startswith(".") for p in out.iterdir()):
        raise FileExistsError(f"{out}: exists and does not hold a demo dataset; refusing to replace it "
                              "(remove it or choose another --out)")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    old = out.parent / f".{out.name}.old"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    try:
        summary = _build(spec, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    return {**summary, "out_dir": str(out), "skipped": False, "seconds": time.perf_counter() - start}


def format_summary(s: dict) -> str:
    """The few lines a user wants after stage 00: sizes, noise ceiling, scene truth, prior."""
    c = s["counts"]
    state = "kept (already complete; --force to rebuild)" if s["skipped"] else f"built in {s['seconds']:.1f} s"
    lines = [f"demo dataset {s['out_dir']}: {state}",
             f"  train: {c['train_records']} images of {c['train_prompts']} prompts; "
             f"test: {c['test_records']} images of {c['test_prompts']} unseen prompts; "
             f"{len(c['generators'])} generators; {c['elements_per_record']:.2f} elements per image",
             f"  {'':<28}{'SRCC':>7}{'PLCC':>7}{'ACC':>7}{'Final':>7}"]
    for name, key in REFERENCES:
        r = s[key]
        lines.append(f"  {name:<28}{r['srcc']:>7.4f}{r['plcc']:>7.4f}{r['acc']:>7.4f}{r['final']:>7.4f}")
    per_kind = ", ".join(f"{k} {v['acc']:.3f}" for k, v in s["perfect_vision_acc_by_kind"].items())
    lines.append(f"  perfect-vision element accuracy: {per_kind}")
    return "\n".join(lines)
