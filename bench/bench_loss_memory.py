"""Peak memory and step time: answer-position logits vs full-sequence logits.

One training step (forward + backward) of the token-focus MSE loss, computed two ways
on the same random-init Qwen2.5-VL (real 151,936-token vocabulary, small hidden size,
few layers, LoRA on the language model as in training, one 448x448 image = 256 image
tokens per row, left-padded questions):

* answer:  ``tokenfocus.loss.answer_label_logits`` -> the LM head on the last position only;
* full:    a plain forward (logits for every position), then the same label columns
           at the last position.

Each mode runs in its own fresh subprocess with the same seed, so the two share
nothing (allocator state included) and their losses must agree to 1e-6.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the timed steps minus the
memory allocated before them. On a CPU, the process's resident-set high-water mark
(VmHWM) during the timed steps minus its resident set (VmRSS) just before them; the
high-water mark is reset first through /proc/self/clear_refs, and glibc is told to
serve every allocation over 64 KiB with mmap so that freed tensors leave the resident
set at once (MALLOC_MMAP_THRESHOLD_), which makes RSS follow live tensors.

    python bench/bench_loss_memory.py [--batch 2] [--seq-len 768] [--steps 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

QWEN25_VOCAB = 151936  # Qwen2.5 LM vocabulary (Qwen2.5-VL-7B pads its embedding to 152,064)
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 151655, 151656, 151652, 151653
LABEL_IDS = [16, 17, 18, 19, 20]  # '1'..'5' in the Qwen2 vocabulary
LEVELS = [1.0, 2.0, 3.0, 4.0, 5.0]
MIB = 2**20


# ----------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # 5: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


class CpuPeak:
    """Resident-set growth over a block of code (bytes), with how it was measured."""

    def __enter__(self):
        import resource

        gc.collect()
        self.hwm = _reset_hwm() and _status_kib("VmRSS") is not None
        if self.hwm:
            self.base = _status_kib("VmRSS") * 1024
            self.method = "VmHWM - VmRSS (peak reset via /proc/self/clear_refs)"
        else:  # no procfs: ru_maxrss never resets, so this only sees growth above the old peak
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth (lower bound: peak could not be reset)"
        return self

    def __exit__(self, *exc):
        import resource

        peak = _status_kib("VmHWM") * 1024 if self.hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak, self.step = peak, peak - self.base


class CudaPeak:
    def __enter__(self):
        import torch

        torch.cuda.synchronize()
        self.base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.method = "torch.cuda.max_memory_allocated - memory_allocated before"
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()
        self.step = self.peak - self.base


# ----------------------------------------------------------------------------- model and inputs
def build(args, device):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = args.hidden // args.heads
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=QWEN25_VOCAB, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=2,
                         bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
                         tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, in_channels=3,
                           out_hidden_size=args.hidden, fullatt_block_indexes=[1]),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(device)
    lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                      target_modules=r".*language_model.*\.(q|k|v|o|gate|up|down)_proj")
    return get_peft_model(model, lora).train()


def make_inputs(args, device):
    """Left-padded rows: system text, one 448x448 image (256 tokens), question; row 0 is longest."""
    import torch

    g = torch.Generator().manual_seed(args.seed + 1)
    grid = args.image_px // 14
    n_image = grid * grid // 4
    block = [VISION_START] + [IMAGE_TOKEN] * n_image + [VISION_END]
    text_len = args.seq_len - len(block) - 20
    if text_len < 10:
        raise SystemExit(f"--seq-len {args.seq_len} leaves no room for text next to {len(block)} image positions")
    rows = []
    for i in range(args.batch):
        question = torch.randint(0, 150000, (text_len - 24 * i,), generator=g).tolist()
        rows.append(torch.randint(0, 150000, (20,), generator=g).tolist() + block + question)
    ids = torch.full((args.batch, args.seq_len), 151643, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, -len(row):] = torch.tensor(row)
        mask[i, -len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "mm_token_type_ids": (ids == IMAGE_TOKEN).int().to(device),
            "pixel_values": torch.randn(args.batch * grid * grid, 3 * 2 * 14 * 14, generator=g).to(device),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * args.batch, device=device)}


# ----------------------------------------------------------------------------- one mode
def run_mode(args) -> dict:
    import torch

    from tokenfocus.loss import answer_label_logits, token_focus_mse

    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = build(args, device)
    inputs = make_inputs(args, device)
    label_ids = torch.tensor(LABEL_IDS, device=device)
    target = (torch.rand(args.batch, generator=torch.Generator().manual_seed(args.seed + 2)) * 4 + 1).to(device)

    def step():
        if args.child == "answer":
            label_logits = answer_label_logits(model, inputs, label_ids)
        else:
            label_logits = model(**inputs).logits[:, -1].index_select(-1, label_ids).float()
        loss = token_focus_mse(label_logits, LEVELS, target)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach(), label_logits.detach()

    step()  # warm-up: thread pools, kernels, lazy inits
    times = []
    probe = CudaPeak() if device.type == "cuda" else CpuPeak()
    with probe:
        for _ in range(args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            loss, label_logits = step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return {"mode": args.child, "device": str(device), "method": probe.method,
            "base_mib": probe.base / MIB, "peak_mib": probe.peak / MIB, "step_mib": probe.step / MIB,
            "s_per_step": statistics.median(times), "loss": loss.double().item(),
            "label_logits": label_logits.double().cpu().tolist(), "seq_len": int(inputs["input_ids"].shape[1]),
            "image_tokens": int((inputs["input_ids"][0] == IMAGE_TOKEN).sum())}


# ----------------------------------------------------------------------------- driver
def spawn(mode: str, argv: list[str]) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    res = subprocess.run([sys.executable, __file__, *argv, "--child", mode], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"{mode} run failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=768, help="padded sequence length, image tokens included")
    ap.add_argument("--image-px", type=int, default=448, help="square image side (448 -> 256 image tokens)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    ap.add_argument("--child", choices=["answer", "full"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        out = run_mode(args)
        print(json.dumps(out))
        return 0

    passthrough = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    answer = spawn("answer", passthrough)
    full = spawn("full", passthrough)
    dloss = abs(answer["loss"] - full["loss"])
    dlogit = max(abs(a - f) for ra, rf in zip(answer["label_logits"], full["label_logits"]) for a, f in zip(ra, rf))
    logits_mib = args.batch * answer["seq_len"] * QWEN25_VOCAB * 4 / MIB

    print(f"token-focus step (forward + backward), random-init Qwen2.5-VL: vocab {QWEN25_VOCAB:,}, hidden {args.hidden}, "
          f"{args.layers} layers, LoRA r {args.lora_rank}; batch {args.batch} x {answer['seq_len']} tokens "
          f"({answer['image_tokens']} image tokens per row), float32 on {answer['device']}")
    print(f"memory: {answer['method']}; median of {args.steps} steps for time")
    print(f"one full-sequence float32 logits tensor is {logits_mib:,.0f} MiB (batch x seq x vocab x 4 bytes)")
    print(f"{'mode':<24}{'step peak MiB':>14}{'process peak MiB':>18}{'s/step':>9}   loss")
    for name, r in (("answer-position logits", answer), ("full-sequence logits", full)):
        print(f"{name:<24}{r['step_mib']:>14.0f}{r['peak_mib']:>18.0f}{r['s_per_step']:>9.2f}   {r['loss']:.9f}")
    ratio = answer["step_mib"] / full["step_mib"]
    print(f"answer / full: step peak {ratio:.3f}, process peak {answer['peak_mib'] / full['peak_mib']:.3f}, "
          f"time {answer['s_per_step'] / full['s_per_step']:.3f}")
    print(f"|loss difference| {dloss:.2e}, max |label-logit difference| {dlogit:.2e} (tolerance 1e-6)")
    ok = dloss <= 1e-6
    print(f"{'OK' if ok else 'FAIL'}: losses {'agree' if ok else 'differ'}; "
          f"answer-position step memory is {ratio:.1%} of full-sequence; total {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
