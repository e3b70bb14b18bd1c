"""Decayed importance: what the tier manager ranks memories by.

score = importance * 0.5 ** (idle_s / half_life_s) * (1 + use_weight * ln(1 + uses))

Importance is the caller's judgement (0..1); it fades with the time since the memory was last
used (halving every ``half_life_s``) and rises, slowly, with the number of uses.
"""

from __future__ import annotations

import numpy as np


def decay_scores(
    importance: np.ndarray,
    last_accessed: np.ndarray,
    uses: np.ndarray,
    now: float,
    half_life_s: float,
    use_weight: float,
) -> np.ndarray:
    idle_s = np.maximum(now - np.asarray(last_accessed, dtype=np.float64), 0.0)
    recency = np.exp2(-idle_s / half_life_s)
    return np.asarray(importance, dtype=np.float64) * recency * (1.0 + use_weight * np.log1p(uses))


def decay_score(importance: float, last_accessed: float, uses: int, now: float, half_life_s: float,
                use_weight: float) -> float:
    """The same formula for one memory."""
    return float(decay_scores(np.array([importance]), np.array([last_accessed]), np.array([uses]), now,
                              half_life_s, use_weight)[0])
