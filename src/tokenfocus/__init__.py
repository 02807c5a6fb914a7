"""TokenFocus-VQA: image-text alignment scoring, overall and per element."""
import os
import warnings

# OpenMP threads that spin while waiting make a busy 2-core machine up to 40x slower on
# small tensors; passive waiting costs nothing measurable when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# peft reads transformers' old-named `is_gradient_checkpointing` property whenever it wraps or
# loads a model; the FutureWarning that raises concerns peft's code, not this project's, and
# would print once per fold.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
