"""Per-fold LoRA fine-tuning with the token-focus loss, on Hugging Face Trainer and peft.

One code path serves real checkpoints on GPUs (bf16, gradient checkpointing, QLoRA, several
processes through ``accelerate launch``) and the tiny demo bases on a CPU. A fold's adapter is
written to ``models/<model>/<group>/fold<k>/`` only when training finished; a killed run resumes
from the last checkpoint in the ``.work`` directory beside it.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from . import loss as tf_loss
from . import prompts, pseudo
from .config import Config, ConfigError, ModelConfig, TrainingConfig, settings_diff
from .data import read_json
from .io import atomic_dir, file_sha256, write_json
from .batches import ImageDataset, QuestionDataset, TokenFocusCollator
from .experiment import is_trained, model_dir
from .infer import evaluate_questions
from .models import load_model_adapter
from .packed import check_backend, packed_label_logits
from .parallel import process_state
from .questions import ELEMENT, TASK_ID, TASK_VALUES, TOTAL, label_logit_table, label_set_of, question_frame
from .trainlog import METRICS_LOG, TRAIN_LOG, EpochEvalCallback, append_log, fit_sample, group_rates, trim_log

log = logging.getLogger("tokenfocus")

# Errors are measured on a 0..1 scale for both kinds of question, so that a mixed model
# weighs a total-score error of one level like an element error of a quarter vote.
TASK_RANGE = {TOTAL: 4.0, ELEMENT: 1.0}


# Settings that do not change what training produces (an adapter made with others is kept).
NON_RESULT_SETTINGS = ("eval_batch", "dataloader_workers", "save_steps", "fit_check_images")


def made_with(cfg: Config, tcfg: TrainingConfig, fold: int | None = None) -> dict:
    """What an adapter's result depends on besides its base: the training settings, the folds, and
    for a pseudo-label model of ``fold`` the source's test dumps it learns from."""
    settings = {f"training.{k}": v for k, v in asdict(tcfg).items() if k not in NON_RESULT_SETTINGS}
    made = {**settings, "folds.csv sha256": file_sha256(cfg.folds_path) if cfg.folds_path.is_file() else None,
            "question templates": prompts.question_templates(label_set_of(tcfg.total_levels).total_tokens)}
    if tcfg.pseudo_labels is not None and fold is not None:
        # The source adapters, not their dumps' bytes: rescoring an unchanged source (stage 04
        # --force, another machine) keeps this model; retraining the source does not.
        made["pseudo-label source sha256"] = {
            str(f.relative_to(cfg.exp_dir)): file_sha256(f) if f.is_file() else None
            for f in pseudo.source_adapters(cfg, tcfg, fold, (TOTAL, ELEMENT))}
    return made


def skip_trained(cfg: Config, model: str, group: str, fold: int, force: bool,
                 tcfg: TrainingConfig | None = None) -> bool:
    """True (and logged) when this fold's adapter is published and ``force`` is not set. With
    ``tcfg``, an adapter made with other settings or other folds stops the run, naming them."""
    out = model_dir(cfg, model, group, fold)
    if force or not is_trained(out):
        return False
    card = read_json(out / "train_done.json")
    if tcfg is not None and "made_with" in card:
        changed = settings_diff(card["made_with"], _as_recorded(card["made_with"], made_with(cfg, tcfg, fold)))
        if changed:
            raise ConfigError(f"{cfg.source}: {out} was trained with other settings: {'; '.join(changed)}. "
                              "Retrain with --force (stage 03), or restore the settings")
    log.info("train %s/%s/fold%d: done, skipping (use --force to retrain)", model, group, fold)
    return True


# Training settings added after adapters were first recorded, each with the value under which
# training is what it was before the setting existed (an option that is off).
ADDED_SETTINGS = {
    "training.total_levels": 5, "training.augment": False, "training.augment_brightness": 0.15,
    "training.augment_contrast": 0.15, "training.augment_blur": 0.005, "training.augment_shift": 0.06,
    "training.pseudo_labels": None, "training.pseudo_weight": 0.5, "training.pseudo_threshold": 0.0,
    "training.pseudo_folds": "unseen", "training.total_weight": 1.0,
    # The wording when the templates began to be recorded (adapters without a record used it).
    "question templates": prompts.FIRST_RECORDED_TEMPLATES,
}


def _as_recorded(made: dict, now: dict) -> dict:
    """``now`` without the ``ADDED_SETTINGS`` an older adapter's record lacks while they hold their
    inert values, so that an adapter trained before an option existed is kept while it is off."""
    return {k: v for k, v in now.items() if k in made or k not in ADDED_SETTINGS or v != ADDED_SETTINGS[k]}


def token_focus_loss(label_logits: torch.Tensor, task: torch.Tensor, target: torch.Tensor,
                     std: torch.Tensor, cols: dict[str, torch.Tensor], kind: str,
                     values: dict = TASK_VALUES, weight: torch.Tensor | None = None,
                     total_weight: float = 1.0) -> torch.Tensor:
    """Mean over the batch of the per-task token-focus losses (MSE on a 0..1 scale, or soft CE),
    each task's levels worth ``values`` (any number of levels), each question counted ``weight``
    times (default 1; pseudo-labelled questions count ``pseudo_weight``), a total question
    ``total_weight`` times more (``training.total_weight``)."""
    total = label_logits.new_zeros(())
    for name, tid in TASK_ID.items():
        rows = task == tid
        if not rows.any():
            continue
        logits = label_logits[rows][:, cols[name].to(label_logits.device)]
        values_t = torch.tensor(values[name], dtype=logits.dtype, device=logits.device)
        if kind == "mse":
            per = tf_loss.token_focus_mse(logits, values_t, target[rows], reduction="none") / TASK_RANGE[name] ** 2
        else:
            probs = tf_loss.soft_label_targets(target[rows], std[rows], values_t)
            per = tf_loss.soft_label_ce(logits, probs, reduction="none")
        if name == TOTAL:
            per = per * total_weight
        total = total + (per.sum() if weight is None else (per * weight[rows].to(per.dtype)).sum())
    return total / len(task)


def constant_loss(questions: pd.DataFrame, kind: str, cols: dict[str, torch.Tensor],
                  values: dict = TASK_VALUES, total_weight: float = 1.0) -> float | None:
    """The training loss of the best answer that looks at neither the image nor the question:
    per task, the mean target (``mse``; a two-level distribution with that expectation) or the
    mean label distribution (``soft_ce``), through ``token_focus_loss`` itself. A fine-tune whose
    loss stays at this level has learnt each task's mean and nothing else. None for ``sft``."""
    if kind not in ("mse", "soft_ce") or questions.empty:
        return None
    task = torch.tensor([TASK_ID[t] for t in questions["task"]])
    target = torch.tensor(questions["target"].to_numpy(float), dtype=torch.float64)
    std_col = questions["target_std"] if "target_std" in questions else pd.Series(0.0, index=questions.index)
    std = torch.tensor(std_col.fillna(0.0).to_numpy(float), dtype=torch.float64)
    weight = torch.tensor(questions["weight"].to_numpy(float)) if "weight" in questions else torch.ones(len(task))
    width = 1 + max(int(c.max()) for c in cols.values())
    logits = torch.zeros(len(task), width, dtype=torch.float64)
    for name, tid in TASK_ID.items():
        rows = task == tid
        if not rows.any():
            continue
        w = weight[rows].to(torch.float64)
        if kind == "mse":
            mean = (target[rows] * w).sum() / w.sum()
            probs = tf_loss.soft_label_targets(mean[None], 0.0, values[name])[0]
        else:
            each = tf_loss.soft_label_targets(target[rows], std[rows], values[name])
            probs = (each * w[:, None]).sum(0) / w.sum()
        logits[rows.nonzero()[:, :1], cols[name]] = probs.clamp_min(1e-12).log()
    return float(token_focus_loss(logits, task, target, std, cols, kind, values, weight, total_weight))


def _trainer_class():
    from transformers import Trainer


    class TokenFocusTrainer(Trainer):
        """Trainer whose loss reads the label tokens at the first answer position only."""

        loss_is_scaled_for_ga = False

        def __init__(self, *a, tf_cfg: TrainingConfig, label_ids, label_cols, label_values, is_vision, **kw):
            super().__init__(*a, **kw)
            self.tf_cfg, self.label_ids, self.label_cols = tf_cfg, label_ids, label_cols
            self.label_values = label_values
            self.is_vision = is_vision

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            task, target, std = inputs.pop("tf_task"), inputs.pop("tf_target"), inputs.pop("tf_std")
            weight = inputs.pop("tf_weight", None)
            if self.tf_cfg.loss == "sft":
                loss = tf_loss.full_vocab_sft_loss(model, inputs, inputs.pop("labels"))
            else:
                label_logits = packed_label_logits if "segment_ids" in inputs else tf_loss.answer_label_logits
                logits = label_logits(model, inputs, self.label_ids.to(task.device))
                loss = token_focus_loss(logits, task, target, std, self.label_cols, self.tf_cfg.loss,
                                        self.label_values, weight, self.tf_cfg.total_weight)
            return (loss, None) if return_outputs else loss

        def create_optimizer(self, model=None):
            # Two learning rates: the vision tower and projector at vision_lr, the rest at lr.
            if self.optimizer is None:
                opt_model = self.model if model is None else model
                params = optimizer_groups(opt_model, self.tf_cfg, self.is_vision,
                                          set(self.get_decay_parameter_names(opt_model)), self.args.weight_decay)
                self.optimizer = torch.optim.AdamW(params, lr=self.tf_cfg.lr,
                                                   betas=(self.tf_cfg.adam_beta1, self.tf_cfg.adam_beta2))
            return self.optimizer

    return TokenFocusTrainer


def optimizer_groups(model, tcfg: TrainingConfig, is_vision, decay: set[str], weight_decay: float) -> list[dict]:
    """AdamW parameter groups of stage 03: trainable vision-tower and projector parameters at
    ``vision_lr``, the rest (LoRA) at ``lr``; weight decay only on the ``decay`` names. The
    ``lr`` groups come first: the Trainer's progress line shows the first group's rate."""
    groups: dict[tuple, list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        vision = is_vision(n)
        groups.setdefault((vision, tcfg.vision_lr if vision else tcfg.lr, weight_decay if n in decay else 0.0), []).append(p)
    return [{"params": groups[k], "lr": k[1], "weight_decay": k[2]} for k in sorted(groups, key=lambda k: k[0])]


def _auto(flag: str) -> bool:
    if flag == "auto":
        return torch.cuda.is_available()
    return flag == "true"


def vision_modules(adapter) -> list[str]:
    """Top-most module names of the vision tower and projector (peft ``modules_to_save``)."""
    names = [n for n, _ in adapter.model.named_modules() if n and adapter.is_vision_param(n + ".")]
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _checkpointing_args(on: bool) -> dict:
    """The TrainingArguments field for activation checkpointing under its current name
    (transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing`` in 5.x)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


def prepare_model(adapter, tcfg: TrainingConfig):
    """LoRA on the language model; the vision tower and projector fully trained when asked."""
    from peft import LoraConfig, get_peft_model

    model = adapter.model
    if tcfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=_auto(tcfg.gradient_checkpointing))
        # On a CPU, bitsandbytes repacks 4-bit weights for fast inference at the first eval-mode
        # forward and never back, after which training steps fail: the epoch-end evaluation
        # would break the next epoch. Training keeps the portable layout.
        for m in model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
    lcfg = LoraConfig(r=tcfg.lora_r, lora_alpha=tcfg.lora_alpha, lora_dropout=tcfg.lora_dropout,
                      target_modules=tcfg.lora_target or adapter.lora_target_regex,
                      modules_to_save=vision_modules(adapter) if tcfg.train_vision else None,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def _accumulation(tcfg: TrainingConfig, world: int) -> int:
    per_step = tcfg.per_device_batch * world
    if tcfg.global_batch % per_step:
        log.warning("global_batch %d is not a multiple of %d (per-device batch x processes); rounding",
                    tcfg.global_batch, per_step)
    return max(1, round(tcfg.global_batch / per_step))


def train_fold(cfg: Config, mcfg: ModelConfig, group: str, fold: int, train_q: pd.DataFrame,
               eval_q: pd.DataFrame, force: bool = False, callbacks: tuple = ()) -> Path:
    """Fine-tune one (model, question group, fold); returns the adapter directory."""
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    out = model_dir(cfg, mcfg.name, group, fold)
    tcfg = mcfg.training_config(cfg.training)
    if skip_trained(cfg, mcfg.name, group, fold, force, tcfg):
        return out
    work = out.parent / f".work_fold{fold}"
    if force:
        # Redoing a fold: the old adapter must not pass for finished if this run dies.
        for d in (work, out):
            if d.exists():
                shutil.rmtree(d)
    torch.manual_seed(tcfg.seed)
    adapter = load_model_adapter(cfg, mcfg, qlora=tcfg.qlora)
    label_set = label_set_of(tcfg.total_levels)
    label_ids, label_cols = label_logit_table(adapter, label_set.tokens)
    model = prepare_model(adapter, tcfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("train %s/%s/fold%d: %d questions, %d held out, %d trainable parameters",
             mcfg.name, group, fold, len(train_q), len(eval_q), n_train)
    world = process_state().num_processes
    packing = tcfg.packing and tcfg.loss != "sft"
    if packing:
        check_backend(model)
        dataset = ImageDataset(train_q)
        # Batches are counted in questions: as many images as hold per_device_batch questions.
        per_device = max(1, round(tcfg.per_device_batch * len(dataset) / max(1, len(train_q))))
    else:
        dataset, per_device = QuestionDataset(train_q, cfg.image_dir), tcfg.per_device_batch
    log.info("train %s/%s/fold%d: %s, %d %s per device step", mcfg.name, group, fold,
             "packed (one sequence per image)" if packing else "one forward per question", per_device,
             "images" if packing else "questions")
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=_accumulation(tcfg, world),
        num_train_epochs=tcfg.epochs,
        max_steps=tcfg.max_steps,
        learning_rate=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        adam_beta1=tcfg.adam_beta1,
        adam_beta2=tcfg.adam_beta2,
        lr_scheduler_type=tcfg.scheduler,
        warmup_steps=tcfg.warmup_steps,
        seed=tcfg.seed,
        data_seed=tcfg.seed,
        bf16=_auto(tcfg.bf16) and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        **_checkpointing_args(_auto(tcfg.gradient_checkpointing)),
        save_strategy="steps",
        save_steps=tcfg.save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(10, tcfg.save_steps)),   # the loss curve's resolution (TRAIN_LOG)
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=tcfg.dataloader_workers,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )
    eval_collator = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False)
    metrics_path, log_path = work / METRICS_LOG, work / TRAIN_LOG
    fit_q = fit_sample(train_q, tcfg.fit_check_images, tcfg.seed + fold)
    flat = constant_loss(train_q, tcfg.loss, label_cols, label_set.values, tcfg.total_weight)
    if flat is not None:
        log.info("train %s/%s/fold%d: a constant answer (each task's mean) has loss %.4f", mcfg.name, group, fold, flat)

    def evaluate(m):
        held = evaluate_questions(adapter, m, eval_q, cfg.image_dir, tcfg.eval_batch, eval_collator)
        if fit_q.empty:
            return held
        fit = evaluate_questions(adapter, m, fit_q, cfg.image_dir, tcfg.eval_batch, eval_collator)
        return {**held, **{f"train_{k}": v for k, v in fit.items()}}

    train_collator = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=True)

    class _Cb(TrainerCallback):
        on_epoch_end = EpochEvalCallback(evaluate, metrics_path)

        def on_epoch_begin(self, args, state, control, **kw):
            train_collator.epoch = int(state.epoch or 0)

        def on_train_begin(self, args, state, control, **kw):
            for path in (log_path, metrics_path) if state.is_world_process_zero else ():
                trim_log(path, state.global_step)   # a resumed run logs its later steps again

        def on_log(self, args, state, control, logs=None, optimizer=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                append_log(log_path, {"step": state.global_step, "epoch": round(state.epoch or 0, 4),
                                      "loss": logs["loss"], "grad_norm": logs.get("grad_norm"),
                                      **group_rates(optimizer, tcfg)})

    trainer = _trainer_class()(
        model=model, args=args, train_dataset=dataset,
        data_collator=train_collator,
        callbacks=[_Cb(), *callbacks], tf_cfg=tcfg, label_ids=label_ids, label_cols=label_cols,
        label_values=label_set.values, is_vision=adapter.is_vision_param)
    work.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(work)) if work.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        _publish(trainer, work, out, {"model": mcfg.name, "family": mcfg.family, "base": mcfg.path,
                                      "group": group, "fold": fold, "train_questions": len(train_q),
                                      "eval_questions": len(eval_q), "train_runtime_s": result.metrics.get("train_runtime"),
                                      "train_loss": result.metrics.get("train_loss"), "constant_loss": flat,
                                      "global_step": trainer.state.global_step, "processes": world, "training": asdict(tcfg),
                                      "made_with": made_with(cfg, tcfg, fold)})
    trainer.accelerator.wait_for_everyone()
    return out


def _publish(trainer, work: Path, out: Path, card: dict) -> None:
    """Write the adapter beside the work dir, then swap it into place (``io.atomic_dir``): at
    every instant the old adapter or the new one is complete."""
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        for name in (METRICS_LOG, TRAIN_LOG):
            if (work / name).is_file():
                shutil.copy(work / name, tmp / name)
        write_json(tmp / "train_done.json", card)
    shutil.rmtree(work, ignore_errors=True)


def fold_questions(cfg: Config, train: pd.DataFrame, folds: pd.DataFrame, fold: int, tasks: tuple[str, ...],
                   tcfg: TrainingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training questions (other folds) and held-out questions (this fold) of the given kinds."""
    q = question_frame(train)
    q = q[q["task"].isin(tasks)].merge(folds[["img_path", "fold"]], on="img_path")
    tr, ev = q[q["fold"] != fold], q[q["fold"] == fold]
    if tcfg.max_train_questions and len(tr) > tcfg.max_train_questions:
        # Whole images, in a seeded order, until the budget is reached (packing needs all of an
        # image's questions together).
        images = tr["img_path"].drop_duplicates().sample(frac=1.0, random_state=tcfg.seed + fold)
        counts = tr.groupby("img_path").size().reindex(images)
        keep = set(images[(counts.cumsum() <= tcfg.max_train_questions).to_numpy()])
        tr = tr[tr["img_path"].isin(keep)]
    if tcfg.pseudo_labels is not None:
        # The test inputs, labelled by the source model (never by a test label), after the
        # labelled questions and outside max_train_questions.
        extra = pseudo.pseudo_questions(cfg, tcfg, fold, tasks)
        tr = pd.concat([tr.assign(weight=1.0), extra.assign(fold=-1)], ignore_index=True)
    # Shuffle is the Trainer's job; a stable order here keeps runs reproducible.
    return tr.reset_index(drop=True), ev.reset_index(drop=True)
