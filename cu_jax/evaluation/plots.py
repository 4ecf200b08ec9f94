"""Plots written next to the JSON artifacts (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def concept_importance_bars(names: Sequence[str], panels: dict[str, np.ndarray], title: str,
                            path: str | pathlib.Path, top: int = 15, highlight: Sequence[int] = ()) -> None:
  """One horizontal bar chart per ranking (e.g. {"IG of log p": ..., "PCBM weight": ...}).

  Concepts are ordered by the first panel; `highlight` marks concepts (e.g. the key concepts).
  """
  first = next(iter(panels.values()))
  order = np.argsort(-first)[:top][::-1]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.32 * len(order) + 1.4),
                           sharey=True, squeeze=False)
  for ax, (label, values) in zip(axes[0], panels.items()):
    colours = ["#d62728" if i in highlight else ("#1f77b4" if values[i] >= 0 else "#7f7f7f") for i in order]
    ax.barh(np.arange(len(order)), values[order], color=colours)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_title(label, fontsize=10)
    ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=8)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def saliency_overlays(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: str | pathlib.Path,
                      suptitle: str = "") -> None:
  """Each image above its attribution map (positive evidence in red) overlaid on the image."""
  n = len(images)
  fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.0), squeeze=False)
  for i in range(n):
    img = images[i].astype(np.float32) / 255.0
    grey = img.mean(-1) if img.shape[-1] == 3 else img[..., 0]
    axes[0, i].imshow(img if img.shape[-1] == 3 else grey, cmap=None if img.shape[-1] == 3 else "gray")
    axes[0, i].set_title(titles[i], fontsize=7)
    scale = np.abs(maps[i]).max() or 1.0
    axes[1, i].imshow(grey, cmap="gray")
    axes[1, i].imshow(maps[i] / scale, cmap="bwr", vmin=-1, vmax=1, alpha=0.6)
    for ax in axes[:, i]:
      ax.set_xticks([])
      ax.set_yticks([])
  if suptitle:
    fig.suptitle(suptitle, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
