#!/usr/bin/env python
"""Stage 05: bagging, stacking and blending of the prediction dumps -> output/<exp>/leaderboard.csv,
output/<exp>/submission/submission.zip and plots in output/<exp>/ensemble/. Settings: the
config's `ensemble:` section. Skipped when the leaderboard is newer than every input.
"""

from tokenfocus.cli import stage_main
from tokenfocus.stages import run_ensemble

if __name__ == "__main__":
    stage_main(__doc__, run_ensemble)
