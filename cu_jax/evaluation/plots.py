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


# ---------------------------------------------------------------------------------------------------------------
# Unlearning report: per-class accuracy, loss distributions, concept importance and membership-inference metrics.
# ---------------------------------------------------------------------------------------------------------------

from matplotlib import lines as mlines, patches as mpatches, ticker as mticker  # noqa: E402

# Okabe & Ito's colour-blind-safe palette; beyond 8 series the colours repeat with a hatch.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_HATCHES = ("", "//", "..", "xx", "\\\\", "++")
_HIGHLIGHT = "#C00000"  # tick labels of the forget class / key concepts
_SHADE = "#DDDDDD"  # background band behind the forget class / key concepts
_TOP_CONCEPTS = 10  # concepts shown by `concept_importance_change` (more only if there are more key concepts)


def _style(i: int) -> dict:
  """Bar colour and hatch of the i-th series (model or subset)."""
  return {"color": _PALETTE[i % len(_PALETTE)], "hatch": _HATCHES[(i // len(_PALETTE)) % len(_HATCHES)],
          "edgecolor": "#333333", "linewidth": 0.4}


def _finite(value) -> bool:
  """True for a number that is neither None nor NaN/inf."""
  if value is None:
    return False
  try:
    return bool(np.isfinite(float(value)))
  except (TypeError, ValueError):
    return False


def _finish_bars(fig, ax, path, title: str, grid_axis: str, legend: bool) -> None:
  """Grid behind the bars, title, the model legend outside the axes, then `_save`."""
  ax.grid(axis=grid_axis, alpha=0.3, zorder=0)
  ax.set_axisbelow(True)
  ax.set_title(title, fontsize=11)
  if legend:
    ax.legend(title="model", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path: str | pathlib.Path, dpi: int = 110) -> None:
  """Writes `fig` to `path` (parent folders created), legends outside the axes included, and closes it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15)
  plt.close(fig)


def per_class_accuracy(class_names: Sequence[str], accuracies: dict[str, Sequence[float | None]],
                       path: str | pathlib.Path, *, forget: int, title: str = "per-class test accuracy") -> None:
  """Grouped bars: one group per class, one bar per model (in dict order).

  The forget class's group is shaded and its tick label drawn bold in red, with the models' values written
  above its bars. None/NaN accuracies leave a gap.
  """
  n = len(class_names)
  if not 0 <= forget < n:
    raise ValueError(f"forget={forget} is not a class index (there are {n} classes)")
  for model, accs in accuracies.items():
    if accs is not None and len(accs) != n:
      raise ValueError(f"{model!r} has {len(accs)} accuracies for {n} classes")
  colour_of = {m: i for i, m in enumerate(accuracies)}  # a skipped (None) model keeps the others' colours
  models = [m for m, accs in accuracies.items() if accs is not None]
  k = max(len(models), 1)
  width = 0.84 / k
  fig_w = min(max(6.5, n * (0.11 * k + 0.3) + 2.5), 40.0)
  fig, ax = plt.subplots(figsize=(fig_w, 4.2))
  ax.axvspan(forget - 0.5, forget + 0.5, color=_SHADE, zorder=0)
  finite = [float(a) for m in models for a in accuracies[m] if _finite(a)]
  top = 1.0 if not finite or max(finite) <= 1.0 else 100.0  # fractions or percentages
  for j, model in enumerate(models):
    xs = [c + (j - (k - 1) / 2) * width for c, a in enumerate(accuracies[model]) if _finite(a)]
    ys = [float(a) for a in accuracies[model] if _finite(a)]
    ax.bar(xs, ys, width, label=model, zorder=2, **_style(colour_of[model]))
    a = accuracies[model][forget]
    if _finite(a):
      ax.text(forget + (j - (k - 1) / 2) * width, float(a) + 0.01 * top, f"{float(a):.2f}", rotation=90,
              ha="center", va="bottom", fontsize=6.5, zorder=3)
  ax.set_xticks(np.arange(n), list(class_names))
  long_names = max((len(str(c)) for c in class_names), default=0) * n > 70
  if long_names:
    plt.setp(ax.get_xticklabels(), rotation=45 if n <= 30 else 90, ha="right" if n <= 30 else "center",
             rotation_mode="anchor" if n <= 30 else "default")
  label = ax.get_xticklabels()[forget]
  label.set_color(_HIGHLIGHT)
  label.set_fontweight("bold")
  ax.set_xlim(-0.6, n - 0.4)
  ax.set_ylim(0, top * 1.12)
  ax.set_ylabel("accuracy" + (" (%)" if top == 100.0 else ""))
  ax.set_xlabel(f"class (forget class '{class_names[forget]}' shaded)")
  _finish_bars(fig, ax, path, title, "y", legend=bool(models))


def loss_distributions(losses: dict[str, dict[str, np.ndarray]], path: str | pathlib.Path, *,
                       title: str = "per-sample loss") -> None:
  """One panel per model (up to 4 columns, shared x axis) with a step histogram per subset.

  The x axis is log10(loss + 1e-8), so that losses of ~0 (pile up at 1e-8) and large losses both show; the
  y axis is the fraction of the subset's samples, so subsets of different sizes compare. A dotted line marks
  each subset's median. None subsets and non-finite losses are skipped.
  """
  eps = 1e-8
  data: dict[str, dict[str, np.ndarray]] = {}
  for model, subsets in losses.items():
    if subsets is None:
      continue
    data[model] = {}
    for subset, values in subsets.items():
      if values is None:
        continue
      v = np.asarray(values, dtype=np.float64).ravel()
      v = v[np.isfinite(v)]
      if v.size:
        data[model][subset] = np.log10(np.maximum(v, 0.0) + eps)
  subset_order = list(dict.fromkeys(s for subsets in data.values() for s in subsets))
  everything = [v for subsets in data.values() for v in subsets.values()]
  lo = np.floor(min(v.min() for v in everything)) if everything else np.log10(eps)
  hi = np.ceil(max(v.max() for v in everything)) if everything else 1.0
  hi = max(hi, lo + 1.0)
  bins = np.linspace(lo, hi, int(min(80, max(20, 8 * (hi - lo)))) + 1)

  n = max(len(data), 1)
  cols = min(4, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows + 0.8), sharex=True, squeeze=False)
  for ax in axes.flat[len(data):]:
    ax.set_visible(False)
  for ax, (model, subsets) in zip(axes.flat, data.items()):
    for subset, v in subsets.items():
      i = subset_order.index(subset)
      colour = _PALETTE[i % len(_PALETTE)]
      weights = np.full(v.shape, 1.0 / v.size)
      ax.hist(v, bins=bins, weights=weights, histtype="stepfilled", color=colour, alpha=0.18)
      ax.hist(v, bins=bins, weights=weights, histtype="step", color=colour, linewidth=1.5)
      ax.axvline(np.median(v), color=colour, linestyle=":", linewidth=1.2)
    if not subsets:
      ax.text(0.5, 0.5, "no losses", ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_title(model, fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
  if not data:
    axes[0, 0].set_visible(True)
    axes[0, 0].text(0.5, 0.5, "no losses", ha="center", va="center", transform=axes[0, 0].transAxes)

  def _tick(x, _pos):
    e = int(round(x))
    if abs(x - e) > 1e-6:
      return ""
    return rf"$\leq 10^{{{e}}}$" if e <= np.log10(eps) else rf"$10^{{{e}}}$"

  step = max(1, int(np.ceil((hi - lo) / 6)))
  for ax in axes.flat:
    ax.set_xticks(np.arange(lo, hi + 0.5, step))
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(_tick))
    ax.set_xlim(lo - 0.03 * (hi - lo), hi)  # a margin so that the pile-up at 1e-8 is not hidden by the spine
  for r in range(rows):
    axes[r, 0].set_ylabel("fraction of samples", fontsize=8)
  # with an incomplete last row, the panel above an empty slot is its column's bottom one: give it tick labels
  for c in range(cols):
    visible = [r for r in range(rows) if r * cols + c < len(data)]
    if visible and visible[-1] != rows - 1:
      axes[visible[-1], c].xaxis.set_tick_params(labelbottom=True)
  fig.supxlabel("per-sample loss (x axis: log10(loss + 1e-8); losses of ~0 pile up at the left)", fontsize=9)
  handles = [mpatches.Patch(facecolor=_PALETTE[i % len(_PALETTE)], alpha=0.6, label=s)
             for i, s in enumerate(subset_order)]
  handles.append(mlines.Line2D([], [], color="#333333", linestyle=":", label="median"))
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 5),
             fontsize=8, frameon=False)
  _save(fig, path)


def concept_importance_change(concept_names: Sequence[str], importance: dict[str, np.ndarray],
                              path: str | pathlib.Path, *, key: Sequence[int], title: str) -> None:
  """Grouped horizontal bars of the forget class's concept importance, one bar per model.

  Shows the key concepts (indices `key`, on top, labels bold red and rows shaded) and then the other concepts
  ranked highest by the first model, up to 10 concepts in all. None models and NaN importances are skipped.
  """
  n = len(concept_names)
  vectors = {}
  for model, values in importance.items():
    if values is None:
      continue
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != n:
      raise ValueError(f"{model!r} has {v.size} importances for {n} concepts")
    vectors[model] = v
  key = list(dict.fromkeys(int(i) for i in key))
  bad = [i for i in key if not 0 <= i < n]
  if bad:
    raise ValueError(f"key concept indices {bad} are out of range for {n} concepts")
  rest: list[int] = []
  if vectors:
    first = next(iter(vectors.values()))
    ranked = np.argsort(-np.where(np.isfinite(first), first, -np.inf), kind="stable")
    rest = [int(i) for i in ranked if int(i) not in key and np.isfinite(first[i])]
  rows = key + rest[:max(0, _TOP_CONCEPTS - len(key))]
  colour_of = {m: i for i, m in enumerate(importance)}  # a skipped (None) model keeps the others' colours
  models = list(vectors)
  k = max(len(models), 1)
  height = 0.84 / k
  fig, ax = plt.subplots(figsize=(7.5, max(2.8, len(rows) * (0.085 * k + 0.2) + 1.2)))
  y = np.arange(len(rows))[::-1]  # first row on top
  for r, i in enumerate(rows):
    if i in key:
      ax.axhspan(y[r] - 0.5, y[r] + 0.5, color=_SHADE, zorder=0)
  for j, model in enumerate(models):
    v = vectors[model][rows] if rows else np.zeros(0)
    ok = np.isfinite(v)
    offsets = y - (j - (k - 1) / 2) * height  # first model on top within a group
    ax.barh(offsets[ok], v[ok], height, label=model, zorder=2, **_style(colour_of[model]))
  ax.axvline(0, color="black", lw=0.6, zorder=3)
  ax.set_yticks(y, [str(concept_names[i]) + ("  (key)" if i in key else "") for i in rows], fontsize=8)
  for label, i in zip(ax.get_yticklabels(), rows):
    if i in key:
      label.set_color(_HIGHLIGHT)
      label.set_fontweight("bold")
  ax.set_ylim(-0.6, len(rows) - 0.4)
  ax.set_xlabel("concept importance for the forget class")
  _finish_bars(fig, ax, path, title, "x", legend=bool(models))


def metric_bars(values: dict[str, dict[str, float | None]], path: str | pathlib.Path, *,
                reference: str | None = "retrain", title: str = "membership inference") -> None:
  """One small panel per metric (up to 4 columns) with one bar per model, values written on the bars.

  If `reference` is one of the models, each panel gets a dashed horizontal line at its value, labelled
  "retrained" (for "retrain") or with the reference's name. None/NaN values leave a bar out, marked "n/a".
  """
  metrics = [m for m, per_model in values.items() if per_model is not None]
  models = list(dict.fromkeys(model for m in metrics for model in values[m]))
  ref_label = "retrained" if reference == "retrain" else str(reference)
  n = max(len(metrics), 1)
  cols = min(4, n)
  rows = -(-n // cols)
  panel_w = max(2.6, 0.42 * len(models) + 0.9)
  fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, 3.3 * rows + 0.5), squeeze=False)
  for ax in axes.flat[len(metrics):]:
    ax.set_visible(False)
  for ax, metric in zip(axes.flat, metrics):
    per_model = values[metric]
    x = np.arange(len(models))
    shown = [float(per_model[m]) for m in models if m in per_model and _finite(per_model[m])]
    ref = per_model.get(reference) if reference is not None else None
    span = shown + ([float(ref)] if _finite(ref) else [])
    lo = min([0.0] + span)
    hi = max([0.0] + span)
    if lo >= 0 and hi <= 1:
      hi = 1.0  # rates, AUCs and accuracies: keep the whole [0, 1] range
    pad = 0.14 * ((hi - lo) or 1.0)
    for j, model in enumerate(models):
      v = per_model.get(model)
      if _finite(v):
        ax.bar(x[j], float(v), 0.75, zorder=2, **_style(j))
        ax.text(x[j], float(v) + (0.01 if float(v) >= 0 else -0.01) * ((hi - lo) or 1.0), f"{float(v):.3g}",
                ha="center", va="bottom" if float(v) >= 0 else "top", fontsize=7, zorder=5,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
      else:
        ax.text(x[j], 0.02 * ((hi - lo) or 1.0), "n/a", ha="center", va="bottom", fontsize=7, color="#666666")
    if _finite(ref):
      ax.axhline(float(ref), color="#333333", linestyle="--", linewidth=1.1, zorder=4, label=ref_label)
      ax.text(1.0, float(ref), f" {ref_label}", transform=ax.get_yaxis_transform(), ha="left", va="center",
              fontsize=7, color="#333333")
    ax.set_ylim(lo - (pad if lo < 0 else 0.0), hi + pad)
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.set_xticks(x, models, fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_title(metric, fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
  if not metrics:
    axes[0, 0].set_visible(True)
    axes[0, 0].text(0.5, 0.5, "no metrics", ha="center", va="center", transform=axes[0, 0].transAxes)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  _save(fig, path)


def image_rows(rows: dict[str, np.ndarray], titles: Sequence[str], path: str | pathlib.Path, *,
               suptitle: str = "") -> None:
  """One row of uint8 images per entry (e.g. {"clean": ..., "poisoned": ...}), titles under the last row."""
  n = min(len(v) for v in rows.values())
  fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.8 * len(rows)), squeeze=False)
  for r, (label, images) in enumerate(rows.items()):
    for i in range(n):
      img = images[i]
      axes[r, i].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
      axes[r, i].set_xticks([]), axes[r, i].set_yticks([])
      if r == len(rows) - 1 and i < len(titles):
        axes[r, i].set_xlabel(titles[i], fontsize=7)
    axes[r, 0].set_ylabel(label, fontsize=9)
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  _save(fig, path)
