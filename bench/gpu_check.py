"""Token-focus training steps at real LVLM sizes on one CUDA GPU.

1. Qwen2.5-VL-7B shape (random init, the Qwen/Qwen2.5-VL-7B-Instruct config numbers
   below), bf16, peft LoRA r 64 / alpha 128 on the language model's linear layers,
   gradient checkpointing, AdamW; synthetic 448x448 images (256 image tokens) and
   left-padded questions. Prints samples/s and peak GPU memory for answer-position
   logits, then for full-sequence logits on the same model for comparison.
2. QLoRA: a 26B-like text model (InternLM2-20B dims, the LM of InternVL2.5-26B, on a
   Qwen2 config) with its linear layers quantised to bitsandbytes 4-bit NF4 and LoRA
   on top; the 256 image positions are plain tokens here (no vision tower). Fewer
   layers are used only when the GPU cannot hold the bf16 model being quantised
   (the script says so). Skipped with a message when bitsandbytes is missing.

    python bench/gpu_check.py            # on a CUDA machine: a few minutes
    python bench/gpu_check.py --smoke    # same code path, tiny dims, CPU (seconds)

Without a CUDA GPU (and without --smoke) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time


import torch

# Qwen/Qwen2.5-VL-7B-Instruct config.json
QWEN25_VL_7B = dict(
    text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000,
              rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
              tie_word_embeddings=False),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, hidden_act="silu",
                out_hidden_size=3584, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    image_px=448,
)
# internlm/internlm2_5-20b-chat dims (InternVL2.5-26B's language model), Qwen2 layer layout
INTERNLM2_20B_LIKE = dict(vocab_size=92544, hidden_size=6144, intermediate_size=16384, num_hidden_layers=48,
                          num_attention_heads=48, num_key_value_heads=8, hidden_act="silu",
                          max_position_embeddings=32768, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                          pad_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                          tie_word_embeddings=False)

# Same structure, tiny numbers: lets --smoke walk the whole code path on a CPU.
SMOKE_VL = dict(
    text=dict(QWEN25_VL_7B["text"], vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
    vision=dict(QWEN25_VL_7B["vision"], depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                out_hidden_size=64, fullatt_block_indexes=[1]),
    image_token_id=4000, video_token_id=4001, vision_start_token_id=4002, vision_end_token_id=4003,
    image_px=112,
)
SMOKE_TEXT = dict(INTERNLM2_20B_LIKE, vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)

LORA_TARGETS = r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LEVELS = [1.0, 2.0, 3.0, 4.0, 5.0]


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


# ----------------------------------------------------------------------------- inputs
def question_batch(batch: int, vocab: int, image_tokens: int, gen: torch.Generator, pad_id: int,
                   image_block: list[int] | None = None):
    """Left-padded rows: 20 system tokens, an image block, a 80-140 token question."""
    rows = []
    for _ in range(batch):
        q_len = int(torch.randint(80, 141, (1,), generator=gen))
        system = torch.randint(0, vocab - 1000, (20,), generator=gen).tolist()
        image = image_block if image_block is not None else torch.randint(0, vocab - 1000, (image_tokens,),
                                                                          generator=gen).tolist()
        question = torch.randint(0, vocab - 1000, (q_len,), generator=gen).tolist()
        rows.append(system + image + question)
    width = max(map(len, rows))
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def vl_inputs(spec: dict, batch: int, device, dtype, gen: torch.Generator) -> dict:
    v = spec["vision"]
    grid = spec["image_px"] // v["patch_size"]
    n_tokens = grid * grid // v["spatial_merge_size"] ** 2
    block = [spec["vision_start_token_id"]] + [spec["image_token_id"]] * n_tokens + [spec["vision_end_token_id"]]
    ids, mask = question_batch(batch, spec["text"]["vocab_size"], n_tokens, gen, spec["text"]["pad_token_id"], block)
    patch_dim = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "mm_token_type_ids": (ids == spec["image_token_id"]).int().to(device),
            "pixel_values": torch.randn(batch * grid * grid, patch_dim, generator=gen).to(device, dtype),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * batch, device=device)}


def text_inputs(text: dict, batch: int, device, gen: torch.Generator, image_tokens: int = 256) -> dict:
    ids, mask = question_batch(batch, text["vocab_size"], image_tokens, gen, text["pad_token_id"])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


# ----------------------------------------------------------------------------- training steps
def enable_checkpointing(model) -> None:
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None:
            cfg.use_cache = False  # a KV cache is useless in training and clashes with checkpointing
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, targets):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, target_modules=targets, bias="none")
    model = get_peft_model(model, cfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return model, n_train, n_all


def run_steps(model, batches: list[dict], label_ids: torch.Tensor, steps: int, device,
              full_logits: bool = False) -> dict:
    """AdamW token-focus steps (one warm-up per batch shape, then ``steps`` timed): samples/s, peak memory, loss."""
    from tokenfocus.loss import answer_label_logits, token_focus_mse

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    cuda = device.type == "cuda"
    model.train()
    losses, t0, base = [], 0.0, 0
    warm = len(batches)
    for i in range(warm + steps):
        if i == warm:  # after warm-up: optimizer state exists, allocator and kernels are warm
            if cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        inputs = batches[i % len(batches)]
        target = (torch.rand(len(inputs["input_ids"]), generator=gen) * 4 + 1).to(device)
        if full_logits:
            label_logits = model(**inputs).logits[:, -1].index_select(-1, label_ids).float()
        else:
            label_logits = answer_label_logits(model, inputs, label_ids)
        loss = token_focus_mse(label_logits, LEVELS, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    n = sum(len(batches[i % len(batches)]["input_ids"]) for i in range(warm, warm + steps))
    out = {"samples_per_s": n / elapsed, "s_per_step": elapsed / steps, "loss": losses[-1]}
    if cuda:
        out["peak_gib"] = gib(torch.cuda.max_memory_allocated())
        out["step_gib"] = gib(torch.cuda.max_memory_allocated() - base)
    del opt
    return out


def report(name: str, res: dict, seq: int, batch: int) -> None:
    mem = f", peak {res['peak_gib']:.2f} GiB (step adds {res['step_gib']:.2f} GiB)" if "peak_gib" in res else ""
    print(f"  {name}: {res['samples_per_s']:.2f} samples/s ({res['s_per_step']:.3f} s/step, batch {batch}, "
          f"seq {seq}){mem}, last loss {res['loss']:.4f}", flush=True)


# ----------------------------------------------------------------------------- phase 1: LoRA
def lora_phase(spec: dict, device, dtype, batch: int, steps: int, compare_full: bool) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(text_config=dict(spec["text"]), vision_config=dict(spec["vision"]),
                           image_token_id=spec["image_token_id"], video_token_id=spec["video_token_id"],
                           vision_start_token_id=spec["vision_start_token_id"],
                           vision_end_token_id=spec["vision_end_token_id"], tie_word_embeddings=False)
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    enable_checkpointing(model)
    model, n_train, n_all = add_lora(model, LORA_TARGETS)
    gen = torch.Generator().manual_seed(1)
    batches = [vl_inputs(spec, batch, device, dtype, gen) for _ in range(2)]
    seq = batches[0]["input_ids"].shape[1]
    label_ids = torch.arange(16, 21, device=device)  # '1'..'5' in the Qwen2 vocabulary
    print(f"LoRA, Qwen2.5-VL-7B shape: {n_all / 1e9:.2f}B parameters, {n_train / 1e6:.1f}M trainable (r 64), "
          f"{str(dtype).replace('torch.', '')}, gradient checkpointing, {spec['image_px']}px images "
          f"({(spec['image_px'] // 28) ** 2} image tokens); built in {time.perf_counter() - t:.0f} s", flush=True)
    report("answer-position logits", run_steps(model, batches, label_ids, steps, device), seq, batch)
    if compare_full:
        report("full-sequence logits  ", run_steps(model, batches, label_ids, max(2, steps // 2), device,
                                                     full_logits=True), seq, batch)
    del model, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- phase 2: QLoRA
def _params4bit(data, module):
    import bitsandbytes as bnb

    kw = dict(requires_grad=False, quant_type="nf4", compress_statistics=True)
    try:
        return bnb.nn.Params4bit(data, module=module, **kw)
    except TypeError:  # older bitsandbytes: no back-reference to the module
        return bnb.nn.Params4bit(data, **kw)


def quantize_linears_4bit(model, device, compute_dtype, skip=("lm_head",)) -> int:
    """Replace every nn.Linear (but ``skip``) by a bitsandbytes NF4 Linear4bit, in place.

    Done one layer at a time on the GPU so the bf16 weight is freed as soon as its
    4-bit copy exists. Returns the number of layers replaced.
    """
    import bitsandbytes as bnb

    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and n.split(".")[-1] not in skip]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        weight = _params4bit(lin.weight.data, q).to(device)
        if not getattr(weight, "bnb_quantized", weight.quant_state is not None):
            weight = _params4bit(lin.weight.data.cpu(), q).to(device)  # versions that quantise on CPU->GPU only
        q.weight = weight
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
        setattr(parent, child, q)
        del lin, weight
    model.is_loaded_in_4bit = True  # tells peft to wrap the 4-bit layers with its bnb LoRA layer
    return len(names)


def layers_that_fit(text: dict, device) -> int:
    """How many decoder layers of bf16 weights fit next to some headroom (the build peak)."""
    h, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    kv = text["num_key_value_heads"] * h // text["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    fixed = 2 * text["vocab_size"] * h
    free, _ = torch.cuda.mem_get_info(device)
    usable = 0.85 * free - 8 * 2**30
    return max(1, min(layers, int((usable / 2 - fixed) // per_layer)))


def qlora_phase(text: dict, device, batch: int, steps: int) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA setup inside bitsandbytes
        print(f"QLoRA: skipped, bitsandbytes is not importable ({type(exc).__name__}: {exc}); "
              "pip install bitsandbytes to run it", flush=True)
        return
    if device.type != "cuda":
        print("QLoRA: skipped, bitsandbytes 4-bit layers need a CUDA GPU", flush=True)
        return
    from transformers import Qwen2Config, Qwen2ForCausalLM

    full_layers = text["num_hidden_layers"]
    n_layers = layers_that_fit(text, device)
    cfg = Qwen2Config(**dict(text, num_hidden_layers=n_layers))
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    n_base = sum(p.numel() for p in model.parameters())
    n_quant = quantize_linears_4bit(model, device, torch.bfloat16)
    gc.collect()
    torch.cuda.empty_cache()
    enable_checkpointing(model)
    model, n_train, _ = add_lora(model, TEXT_LORA_TARGETS)
    gen = torch.Generator().manual_seed(2)
    batches = [text_inputs(text, batch, device, gen) for _ in range(2)]
    seq = batches[0]["input_ids"].shape[1]
    layers_note = "all layers" if n_layers == full_layers else \
        f"{n_layers} of {full_layers} layers: the bf16 model to quantise would not fit this GPU"
    print(f"QLoRA, 26B-like LM (InternLM2-20B dims on a Qwen2 config, {layers_note}): {n_base / 1e9:.2f}B "
          f"parameters, {n_quant} linear layers in NF4, {n_train / 1e6:.1f}M trainable (r 64), "
          f"256 image positions as plain tokens; built in {time.perf_counter() - t:.0f} s", flush=True)
    report("answer-position logits", run_steps(model, batches, torch.arange(16, 21, device=device), steps, device),
           seq, batch)
    del model, batches
    gc.collect()
    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny dims on CPU (checks the code path only)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after two warm-up steps)")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the 7B LoRA run")
    ap.add_argument("--qlora-batch", type=int, default=4, help="batch size of the 26B-like QLoRA run")
    ap.add_argument("--no-full", action="store_true", help="skip the full-sequence-logits comparison")
    ap.add_argument("--skip-qlora", action="store_true")
    args = ap.parse_args(argv)

    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        vl, text, args.steps, args.batch, args.qlora_batch = SMOKE_VL, SMOKE_TEXT, 2, 2, 2
        print("smoke run: tiny dims on CPU, float32 (timings say nothing about real sizes)", flush=True)
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to measure. "
              "Run it on a CUDA machine, or with --smoke to walk the code path on CPU.")
        return 0
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        vl, text = QWEN25_VL_7B, INTERNLM2_20B_LIKE
        print(f"GPU: {torch.cuda.get_device_name(device)}, "
              f"{gib(torch.cuda.get_device_properties(device).total_memory):.0f} GiB; "
              f"torch {torch.__version__}", flush=True)

    failed = False
    t = time.perf_counter()
    try:
        lora_phase(vl, device, dtype, args.batch, args.steps, not args.no_full)
    except Exception as exc:
        failed = True
        print(f"LoRA phase FAILED: {type(exc).__name__}: {exc}", flush=True)
    if not args.skip_qlora:
        try:
            qlora_phase(text, device, args.qlora_batch, args.steps)
        except Exception as exc:
            failed = True
            print(f"QLoRA phase FAILED: {type(exc).__name__}: {exc}", flush=True)
    print(f"total {time.perf_counter() - t:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
