"""Figures as pure functions: tidy DataFrame in, matplotlib Figure out; one helper saves them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from vpd.utils.io import atomic_path  # noqa: E402

_THEME_SET = False


def set_theme() -> None:
    global _THEME_SET
    if not _THEME_SET:
        sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
        _THEME_SET = True


def save_figure(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Save `fig` as `<stem>.png` and `<stem>.pdf` atomically, then close it."""
    stem = Path(stem)
    written = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        written.append(path)
    plt.close(fig)
    return written
