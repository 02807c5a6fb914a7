"""TokenFocus-VQA: image-text alignment scoring, overall and per element."""
import os

# OpenMP threads that spin while waiting make a busy 2-core machine up to 40x slower on
# small tensors; passive waiting costs nothing measurable when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
