"""Questions/s and peak memory of packed training against one forward per question.

One training step is forward + backward of the token-focus MSE loss + an AdamW step over a
batch of images with all their questions (the total question and ``--elements`` element
questions each), computed two ways on the same model, questions and targets:

* per-question: ``adapter.encode`` of every (image, question) pair, one full sequence each,
  ``loss.answer_label_logits`` (the LM head at the answer position only), as training ran before;
* packed: ``packed.pack_batch`` (one sequence per image: prefix once, every question a segment
  that sees only the prefix and itself) and ``packed.packed_label_logits``.

Two models: the tiny demo Qwen2.5-VL base (its 112 px images, 49 image tokens), and a mid-size
random-init Qwen2.5-VL (real 151,936-token vocabulary, 448 px = 256 image tokens, the config of
``bench_fast_scoring.py``). Modes alternate within each round on the same process; the fastest
round counts. Peak memory: the step's resident-set high-water mark above the resident set before
it (CPU, reset through /proc/self/clear_refs) or ``max_memory_allocated`` (CUDA). It checks
that both losses agree to 1e-5 and prints the ratios; the last line is
``packed/per-question questions/s: X.XXx`` for the mid-size config.

    python bench/bench_packed_training.py [--quick] [--images 2] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from bench_fast_scoring import build_adapter, workload
from bench_loss_memory import MIB, CpuPeak, CudaPeak

from tokenfocus.infer import label_logit_table
from tokenfocus.loss import answer_label_logits
from tokenfocus.lvlm import load_adapter
from tokenfocus.packed import pack_batch, packed_label_logits
from tokenfocus.train import token_focus_loss

TINY_QWEN = ROOT / "input" / "pretrained" / "tiny-qwen2.5-vl"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3, help="images per training step")
    ap.add_argument("--elements", type=int, default=5, help="element questions per image (plus the total one)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, modes alternating; the fastest counts")
    ap.add_argument("--quick", action="store_true", help="2 images, 2 rounds, a smaller mid-size model (< 60 s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 2, 2
    return args


def mid_size(args):
    """The mid-size random-init Qwen2.5-VL of bench_fast_scoring (448 px, 256 image tokens)."""
    ns = argparse.Namespace(image_size=448, hidden=512 if args.quick else 1024, layers=2 if args.quick else 4,
                            vision_hidden=256 if args.quick else 384, vision_depth=2, seed=args.seed)
    return build_adapter(ns), 448


def tiny(args):
    return load_adapter("qwen2_5_vl", str(TINY_QWEN)), 112


def run_config(name: str, adapter, side: int, args) -> dict:
    ids, cols = label_logit_table(adapter)
    images, questions, tasks = workload(args.images, args.elements, side, args.seed)
    task = torch.tensor([0 if t == "total" else 1 for ts in tasks for t in ts])
    gen = torch.Generator().manual_seed(args.seed)
    target = torch.where(task == 0, 1 + 4 * torch.rand(len(task), generator=gen), torch.rand(len(task), generator=gen))
    std = torch.zeros(len(task))
    model = adapter.model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flat_images = [im for im, qs in zip(images, questions) for _ in qs]
    flat_q = [q for qs in questions for q in qs]
    probe = CudaPeak if torch.cuda.is_available() else CpuPeak

    def step(packed: bool):
        model.load_state_dict(state)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        t0 = time.perf_counter()
        if packed:
            logits = packed_label_logits(model, adapter.prepare(pack_batch(adapter, images, questions)), ids)
        else:
            logits = answer_label_logits(model, adapter.prepare(adapter.encode(flat_images, flat_q)), ids)
        loss = token_focus_loss(logits, task, target, std, cols, "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, float(loss.detach())

    step(False), step(True)  # first-call allocations, untimed
    times = {"per-question": [], "packed": []}
    peaks, losses = {}, {}
    for _ in range(args.rounds):
        for mode in times:
            with probe() as p:
                sec, loss = step(mode == "packed")
            times[mode].append(sec)
            peaks[mode] = max(peaks.get(mode, 0), p.step)
            losses[mode] = loss
    model.load_state_dict(state)
    model.eval()
    n_q = len(flat_q)
    best = {m: min(t) for m, t in times.items()}
    enc = adapter.encode(flat_images, flat_q)
    packed_tokens = int(pack_batch(adapter, images, questions)["attention_mask"].sum())
    print(f"\n{name}: {args.images} images x (1 total + {args.elements} elements) = {n_q} questions a step; "
          f"language-model tokens per step: per-question {int(enc['attention_mask'].sum())}, packed {packed_tokens}")
    print(f"{'mode':<14}{'s/step':>9}{'questions/s':>13}{'step peak MiB':>15}{'loss':>14}   rounds (s)")
    for mode in times:
        print(f"{mode:<14}{best[mode]:9.3f}{n_q / best[mode]:13.2f}{peaks[mode] / MIB:15.0f}{losses[mode]:14.8f}   "
              f"{' '.join(f'{t:.3f}' for t in times[mode])}")
    ratio = best["per-question"] / best["packed"]
    mem = peaks["packed"] / max(1, peaks["per-question"])
    diff = abs(losses["packed"] - losses["per-question"])
    print(f"{name}: packed/per-question questions/s {ratio:.2f}x, step peak memory {mem:.2f}x, |loss diff| {diff:.1e}")
    return {"ratio": ratio, "memory": mem, "diff": diff}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, {'CUDA' if torch.cuda.is_available() else 'CPU'} float32")
    results = {}
    for name, build in (("tiny Qwen2.5-VL base", tiny), ("mid-size Qwen2.5-VL", mid_size)):
        adapter, side = build(args)
        results[name] = run_config(name, adapter, side, args)
    print("what limits it: the packed step still runs every question's own tokens (instruction, element) and "
          "the attention over the prefix for each of them; the per-question step repeats the vision tower and "
          "the prefix for every question, so the ratio approaches (prefix + suffix) / (prefix / n + suffix).")
    bad = [n for n, r in results.items() if r["diff"] > 1e-5]
    if bad:
        print(f"FAIL: packed and per-question losses differ by more than 1e-5 on {bad}")
        return 1
    print(f"packed/per-question questions/s: {results['mid-size Qwen2.5-VL']['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
