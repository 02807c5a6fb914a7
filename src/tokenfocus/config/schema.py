"""The experiment's sections as dataclasses (dataset, folds, training, models, ablation,
ensemble), with their own checks and derived paths."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..demo.build import DemoSpec
from .coerce import ConfigError, build

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
CONFIG_ENV = "TOKENFOCUS_CONFIG"  # the experiment a notebook walks through (default: the demo)


@dataclass
class EnsembleSettings:
    """What to stack and how; the defaults run the demo in about a minute on 2 CPU cores."""

    base_models: list[str] | None = None   # stacked; None: every model whose dumps are of kind 'base'
    baselines: list[str] | None = None     # leaderboard rows only; None: the dumps of kind 'baseline'
    meta_models: list[str] = field(default_factory=lambda: ["xgboost", "lightgbm"])
    n_estimators: int = 300                # cap; the inner CV picks the number actually used
    learning_rate: float = 0.05
    max_depth: int = 3                     # xgboost
    num_leaves: int = 15                   # lightgbm
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample: float = 0.8
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 30
    inner_cv: bool = True
    # T2I model and prompt type: 'auto' drops them when the test hides them, 'use' keeps them,
    # 'drop' never uses them, 'mask' trains on every row twice, with and without them.
    structural: str = "auto"
    # Meta-model test inputs: 'per_fold' scores each fold model's test predictions and averages
    # (the same input distribution as OOF); 'bagged' scores the fold-averaged predictions.
    test_inputs: str = "per_fold"
    seed: int = 1234
    n_jobs: int = 1                        # demo-sized data: threads cost more than they save
    runtime_per_image: float | None = None  # readme value; None: this stage's time per test image
    non_llm_models: list[str] = field(default_factory=lambda: ["prior"])
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"structural": ("auto", "use", "drop", "mask"), "test_inputs": ("per_fold", "bagged")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ensemble settings: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        bad = [m for m in self.meta_models if m not in ("xgboost", "lightgbm")]
        if bad or not self.meta_models:
            raise ConfigError(f"ensemble settings: meta_models must be a non-empty subset of "
                             f"['xgboost', 'lightgbm'], got {self.meta_models!r}")

    @classmethod
    def coerce(cls, value: Any = None) -> "EnsembleSettings":
        """Settings from None (defaults), an instance, another dataclass or a mapping (unknown keys refused)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, Mapping):
            raise TypeError(f"ensemble settings: expected a mapping, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"ensemble settings: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(value))


@dataclass
class DatasetConfig:
    root: str = "input/demo"
    train_file: str = "train_list.json"
    test_file: str = "test.json"
    image_dir: str = "images"
    # Hidden test truth and the demo's noise ceiling; absent for the real challenge data.
    eval_file: Optional[str] = None
    noise_ceiling_file: Optional[str] = None


@dataclass
class FoldsConfig:
    n_folds: int = 5
    seed: int = 1234
    n_bins: int = 5


@dataclass
class TrainingConfig:
    """Fine-tuning settings; the defaults are the paper's Table 2."""

    task_mode: str = "mixed"            # 'mixed': one model answers both question kinds; 'separate'
    loss: str = "mse"                   # 'mse' (token-focus), 'soft_ce' (token-focus), 'sft' (full vocab)
    structural: bool = True             # T2I model, prompt type, prompt-evaluation fields in the question
    structural_drop_rate: float = 0.5   # per field, so the model also works when the test hides them
    packing: bool = True                # all of an image's questions in one forward (tokenfocus.packed);
                                        # structural dropout is then drawn per image; 'sft' never packs
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target: Optional[str] = None   # regex; default: the adapter's language-model linear layers
    train_vision: bool = True           # vision tower + projector fully trained at vision_lr
    lr: float = 1e-4
    vision_lr: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.05
    scheduler: str = "cosine"
    warmup_steps: int = 200
    global_batch: int = 64
    per_device_batch: int = 8
    epochs: float = 3.0
    max_steps: int = -1                 # > 0 overrides epochs
    seed: int = 1234
    bf16: str = "auto"                  # 'auto': bf16 where CUDA supports it
    gradient_checkpointing: str = "auto"  # 'auto': on GPU only
    qlora: bool = False                 # bitsandbytes 4-bit base (26B/38B)
    save_steps: int = 200
    eval_batch: int = 32
    # Training images scored after every epoch beside the held-out fold (metrics.jsonl 'train_*'):
    # a fine-tune that scores no better on what it trained on than on the held-out fold underfits.
    fit_check_images: int = 100
    dataloader_workers: int = 0
    max_train_questions: Optional[int] = None   # subsample per fold (demo budget)
    # The total's answer levels (prompts.total_levels): 5 is the paper's 1-5; 9 half-steps or 15
    # levels (A..O) read the total iMatch's way, from finer level tokens mapped onto 1-5.
    total_levels: int = 5
    # A total question's weight in the loss against an element question's (1: the paper's, every
    # question counts once). A mixed image has one total and ~6 element questions.
    total_weight: float = 1.0
    # Label-preserving image augmentation in the training collator (tokenfocus.augment; off in
    # the paper's Table 2, on in iMatch as random lighting): brightness / contrast factors in
    # [1 - x, 1 + x], blur radius and shrink-and-shift as fractions of the image side.
    augment: bool = False
    augment_brightness: float = 0.15
    augment_contrast: float = 0.15
    augment_blur: float = 0.005
    augment_shift: float = 0.06
    # Pseudo-labels (iMatch; tokenfocus.pseudo): a second round that adds the test inputs,
    # labelled by the test predictions of the model named here (None: off); a pseudo-labelled
    # question weighs pseudo_weight in the loss and is kept when its confidence (0..1) reaches
    # pseudo_threshold; pseudo_folds 'unseen' labels fold k's extra questions with the source's
    # fold-k model only (honest OOF), 'all' with the mean of all its folds.
    pseudo_labels: Optional[str] = None
    pseudo_weight: float = 0.5
    pseudo_threshold: float = 0.0
    pseudo_folds: str = "unseen"


@dataclass
class ModelConfig:
    name: str = ""                      # directory and dump name, e.g. 'qwen2_5_vl'
    family: str = ""                    # adapter: 'qwen2_5_vl' | 'internvl'
    path: str = ""                      # local directory (relative to the repository), or a hub id
    hub: bool = False                   # path is a hub id ('owner/name'), fetched by from_pretrained
    trust_remote_code: bool = False     # explicit opt-in for remote-code checkpoints only
    dtype: str = "auto"                 # 'auto': bfloat16 on CUDA, float32 on CPU
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    training: dict[str, Any] = field(default_factory=dict)   # per-model overrides of `training`
    folds: Optional[list[int]] = None   # train and score only these folds (ablations); None: all

    def fold_list(self, n_folds: int) -> list[int]:
        """The folds this model trains and scores: its ``folds``, or all ``n_folds``."""
        return list(self.folds) if self.folds is not None else list(range(n_folds))

    def training_config(self, base: "TrainingConfig", where: str = "") -> "TrainingConfig":
        merged = {**dataclasses.asdict(base), **self.training}
        return build(TrainingConfig, merged, f"{where}models[{self.name}].training")


@dataclass
class AblationConfig:
    """Variants of one model's training, compared on the out-of-fold predictions of a few folds."""

    model: str = ""
    folds: list[int] = field(default_factory=lambda: [0])
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> training overrides
    # More training runs per fine-tuned variant, one per training.seed listed (LoRA initialisation,
    # data order, dropout draws): ablation.csv then gives each variant's mean over its runs and
    # their sd, the run-to-run noise a bootstrap over prompts does not see.
    seeds: list[int] = field(default_factory=list)


def _run_name(model: str, variant: str, seed: int | None) -> str:
    """The derived model of one ablation run: ``<model>_<variant>``, ``_seed<s>`` for the extra runs."""
    return f"{model}_{variant}" + ("" if seed is None else f"_seed{seed}")


@dataclass
class Config:
    name: str = "demo"
    seed: int = 1234
    output_root: str = "output"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    demo: Optional[DemoSpec] = None     # only for the demo, which stage 00 renders
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    models: list[ModelConfig] = field(default_factory=list)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    zeroshot: bool = True               # score every untuned base as a baseline
    # Folds trained / scored side by side on a CPU (stages 03, 04): a number, or 'auto' = one per
    # core (the demo's setting: tiny models leave cores idle). Default 1: a real LVLM on a CPU
    # uses every core on its own and would be loaded once per process. With a GPU, or under
    # accelerate launch, folds run one after another whatever this says.
    jobs: Union[int, str] = 1
    ablation: Optional[AblationConfig] = None
    source: str = ""

    def ablation_models(self) -> list[ModelConfig]:
        """One derived model per ablation variant and training run (``ablation.seeds``: runs beyond
        the first, named ``<variant>_seed<s>``), trained on the ablation folds only. A run whose
        settings equal its model's own is not trained again: that model's folds serve."""
        if self.ablation is None:
            return []
        found = [m for m in self.models if m.name == self.ablation.model]
        if not found:
            raise ConfigError(f"{self.source}: ablation.model {self.ablation.model!r} is not one of the models "
                              f"{[m.name for m in self.models]}")
        base = found[0]
        own = base.training_config(self.training)
        out = []
        for variant, overrides in self.ablation.variants.items():
            for seed in [None, *self.ablation.seeds]:
                name = _run_name(base.name, variant, seed)
                training = {**base.training, **overrides, **({} if seed is None else {"seed": seed})}
                m = dataclasses.replace(base, name=name, training=training, folds=list(self.ablation.folds))
                if m.training_config(self.training) != own:
                    out.append(m)
        return out

    def ablation_sources(self) -> dict[str, list[str]]:
        """Ablation variant -> the models whose dumps hold its runs (first run first)."""
        if self.ablation is None:
            return {}
        trained = {m.name for m in self.ablation_models()}
        base = self.ablation.model
        runs = {}
        for v in self.ablation.variants:
            names = [_run_name(base, v, seed) for seed in [None, *self.ablation.seeds]]
            runs[v] = [n if n in trained else base for n in names]
        return runs

    def model(self, name: str) -> ModelConfig:
        for m in self.models + self.ablation_models():
            if m.name == name:
                return m
        raise ConfigError(f"{self.source}: no model named {name!r}; models: {[m.name for m in self.models]}")

    # Paths, resolved against the repository root so stages run from anywhere.
    def path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def data_root(self) -> Path:
        return self.path(self.dataset.root)

    @property
    def train_path(self) -> Path:
        return self.data_root / self.dataset.train_file

    @property
    def test_path(self) -> Path:
        return self.data_root / self.dataset.test_file

    @property
    def image_dir(self) -> Path:
        return self.data_root / self.dataset.image_dir

    @property
    def eval_path(self) -> Path | None:
        return self.data_root / self.dataset.eval_file if self.dataset.eval_file else None

    @property
    def noise_ceiling_path(self) -> Path | None:
        f = self.dataset.noise_ceiling_file
        return self.data_root / f if f else None

    @property
    def exp_dir(self) -> Path:
        return self.path(self.output_root) / self.name

    @property
    def folds_path(self) -> Path:
        return self.exp_dir / "folds.csv"
