"""Evaluation reports a person reads at a glance: Markdown or HTML with PNG figures.

Figures are drawn with matplotlib's Agg canvas (no display needed, no global
pyplot state): the ROC curve, score histograms of normal vs anomalous images
with the threshold, and the most anomalous images next to their heatmaps.

Heatmaps come from :mod:`anomem.localisation` through
:meth:`anomem.detector.AnoMem.anomaly_map`: the multi-scale deviation maps
(Eq. 8) scored per position, upsampled to the model's input side and fused
with the weights alpha(s) of Eq. 13.  Every file is written atomically.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import roc_curve

from anomem.detector import AnoMem
from anomem.serialization import atomic_write_bytes, atomic_write_text

#: Overlays are enlarged (nearest neighbour) to at least this many pixels per side.
OVERLAY_MIN_SIDE = 128
HEAT_ALPHA = 0.5
#: Gaussian smoothing of heatmaps, as a fraction of the input side (4 px at 128 px).
HEAT_SIGMA_PER_SIDE = 1 / 32


def anomaly_heatmaps(det: AnoMem, images: torch.Tensor) -> np.ndarray:
    """Heatmaps (N, S, S) of uint8 (N, 3, S, S) images, higher = more anomalous.

    :meth:`anomem.detector.AnoMem.anomaly_map` (per-position deviations of every
    scale, Eq. 8, upsampled and fused with alpha(s) of Eq. 13), smoothed by a
    gaussian of :data:`HEAT_SIGMA_PER_SIDE` times the input side.
    """
    return det.anomaly_map(images, sigma=HEAT_SIGMA_PER_SIDE * det.config_.backbone.image_size)


def overlay(image: torch.Tensor | np.ndarray, heat: np.ndarray, low: float, high: float) -> np.ndarray:
    """Blend a colour-mapped heatmap (``low``..``high``) over a uint8 (3, S, S) image; uint8 (H, W, 3)."""
    rgb = np.asarray(image).transpose(1, 2, 0).astype(np.float64) / 255.0
    colour = colormaps["inferno"](np.clip((heat - low) / max(high - low, 1e-12), 0.0, 1.0))[..., :3]
    blend = (1.0 - HEAT_ALPHA) * rgb + HEAT_ALPHA * colour
    out = Image.fromarray(np.round(blend * 255).astype(np.uint8))
    scale = max(1, -(-OVERLAY_MIN_SIDE // max(out.size)))
    return np.asarray(out.resize((out.width * scale, out.height * scale), Image.NEAREST))


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, 3) array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_overlays(folder: str | Path, names: Sequence[str], images: torch.Tensor,
                   heat: np.ndarray) -> list[Path]:
    """One ``<name>.png`` overlay per image in ``folder``; the colour scale is shared by all."""
    low, high = float(heat.min()), float(heat.max())
    out = []
    for name, img, h in zip(names, images, heat, strict=True):
        out.append(atomic_write_bytes(Path(folder) / f"{name}.png", png_bytes(overlay(img, h, low, high))))
    return out


def safe_name(path: str | Path) -> str:
    """A flat file name for an image path (separators, dots and odd characters become ``_``)."""
    text = Path(path).as_posix().lstrip("./")
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "image"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text (RFC 4180 quoting) of ``rows`` under ``header``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def roc_png(labels: np.ndarray, scores: np.ndarray, auroc: float) -> bytes:
    """The ROC curve (anomalies positive) with the chance diagonal."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"AnoMem (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set(xlabel="false-positive rate (normals flagged)", ylabel="true-positive rate (anomalies found)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")
    ax.legend(loc="lower right")
    return _figure_png(fig)


def histogram_png(labels: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    """Score histograms of normal and anomalous images, with the decision threshold."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 31)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"normal ({int((labels == 0).sum())})")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"anomaly ({int((labels == 1).sum())})")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="images", title="Score histograms")
    ax.legend()
    return _figure_png(fig)


def top_anomalies_png(images: torch.Tensor, heat: np.ndarray, scores: np.ndarray,
                      labels: np.ndarray, names: Sequence[str]) -> bytes:
    """A grid: one row per image, the image and its heatmap overlay side by side."""
    low, high = float(heat.min()), float(heat.max())
    fig = Figure(figsize=(5, 2.4 * len(images)))
    for i in range(len(images)):
        truth = "anomaly" if labels[i] == 1 else "normal"
        for col, (pic, title) in enumerate(((images[i].permute(1, 2, 0).numpy(), names[i]),
                                            (overlay(images[i], heat[i], low, high),
                                             f"score {scores[i]:.4g} ({truth})"))):
            ax = fig.add_subplot(len(images), 2, 2 * i + col + 1)
            ax.imshow(pic, interpolation="nearest")
            ax.set_title(title if len(title) <= 40 else "..." + title[-37:], fontsize=8)
            ax.axis("off")
    return _figure_png(fig)


Block = tuple[str, Any]


def _render(blocks: list[Block], fmt: str) -> str:
    out: list[str] = []
    for kind, value in blocks:
        if fmt == "md":
            if kind == "h1" or kind == "h2":
                out.append(("# " if kind == "h1" else "## ") + value)
            elif kind == "p":
                out.append(value)
            elif kind == "img":
                out.append(f"![{value[1]}]({value[0]})")
            else:  # table: (header, rows)
                head, rows = value
                out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows]))
        else:
            if kind in ("h1", "h2", "p"):
                out.append(f"<{kind}>{html.escape(value)}</{kind}>")
            elif kind == "img":
                out.append(f'<img src="{html.escape(value[0])}" alt="{html.escape(value[1])}">')
            else:
                head, rows = value
                cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                               for r in rows)
                out.append(f"<table><tr>{cells}</tr>{body}</table>")
    if fmt == "md":
        return "\n\n".join(out) + "\n"
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 8px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>AnoMem evaluation</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_report(folder: str | Path, det: AnoMem, *, labels: np.ndarray, scores: np.ndarray,
                 threshold: float, names: Sequence[str], images: torch.Tensor,
                 metrics: dict[str, float], per_type: list[tuple[str, int, float, float]],
                 summary: str, fmt: str = "html", top: int = 8, reference: str | None = None,
                 notes: Sequence[str] = ()) -> Path:
    """Write ``report.html`` or ``report.md`` with ``roc.png``, ``histogram.png``, ``top_anomalies.png``.

    Args:
        per_type: rows (anomaly type, images, AUROC vs all normals, detection rate at threshold).
        summary: one paragraph placed under the title (model, data, threshold origin).
        fmt: ``"html"`` or ``"md"``.
        reference: how ``metrics["reference_auroc"]`` was obtained (a training-free
            detector on the same images), shown beside the model's AUROC.
        notes: warnings placed under the summary (e.g. the model is below the reference).
        top: how many of the highest-scoring images to show with heatmaps.

    Returns the path of the report file.
    """
    folder = Path(folder)
    order = np.argsort(-scores, kind="stable")[:top]
    atomic_write_bytes(folder / "roc.png", roc_png(labels, scores, metrics["auroc"]))
    atomic_write_bytes(folder / "histogram.png", histogram_png(labels, scores, threshold))
    sel = torch.as_tensor(order)
    atomic_write_bytes(folder / "top_anomalies.png", top_anomalies_png(
        images[sel], anomaly_heatmaps(det, images[sel]), scores[order], labels[order],
        [names[i] for i in order]))
    rows = [("AUROC", f"{metrics['auroc']:.4f}")]
    if reference is not None:
        rows.append((f"AUROC of the reference: {reference}", f"{metrics['reference_auroc']:.4f}"))
    rows += [("AUPR (average precision)", f"{metrics['aupr']:.4f}"),
            ("FPR at 95% TPR", f"{metrics['fpr_at_95_tpr']:.4f}"),
            (f"F1 at threshold {threshold:.4g}", f"{metrics['f1']:.4f}"),
            ("precision / recall at threshold", f"{metrics['precision']:.4f} / {metrics['recall']:.4f}"),
            ("normals flagged (false rejections)", f"{int(metrics['fp'])} of "
                                                   f"{int(metrics['fp'] + metrics['tn'])}"),
            ("anomalies missed", f"{int(metrics['fn'])} of {int(metrics['fn'] + metrics['tp'])}")]
    blocks: list[Block] = [
        ("h1", "AnoMem evaluation report"), ("p", summary),
        *[("p", f"Warning: {note}.") for note in notes],
        ("h2", "Metrics"), ("table", (("metric", "value"), rows)),
        ("h2", "Per anomaly type"),
        ("table", (("type", "images", "AUROC vs normals", "detected at threshold"),
                   [(t, n, f"{a:.4f}", f"{100 * d:.1f}%") for t, n, a, d in per_type])),
        ("h2", "ROC curve"), ("img", ("roc.png", "ROC curve")),
        ("h2", "Score histograms"), ("img", ("histogram.png", "score histograms")),
        ("h2", f"The {len(order)} most anomalous images"),
        ("p", "Left: the image as the model sees it; right: its anomaly heatmap (deviation from the "
              "memory, Eq. 8, fused over scales; brighter = more anomalous, one colour scale for all)."),
        ("img", ("top_anomalies.png", "most anomalous images with heatmaps")),
        ("table", (("rank", "file", "score", "truth", "decision"),
                   [(r + 1, names[i], f"{scores[i]:.5g}", "anomaly" if labels[i] else "normal",
                     "anomaly" if scores[i] > threshold else "normal") for r, i in enumerate(order)])),
    ]
    return atomic_write_text(folder / f"report.{fmt}", _render(blocks, fmt))
