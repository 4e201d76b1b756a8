"""Evaluation reports a person reads at a glance: Markdown or HTML with PNG figures.

Figures are drawn with matplotlib's Agg canvas (no display needed, no global
pyplot state): the ROC curve, score histograms of normal vs anomalous images
with the threshold, and the most anomalous images next to their heatmaps.

Heatmaps are :meth:`anomem.detector.AnoMem.anomaly_map` (:mod:`anomem.heatmaps`):
the multi-scale deviation maps (Eq. 8) scored per position, upsampled and fused
with the weights alpha(s) of Eq. 13, smoothed, at each image's own size.  An
overlay shows the image in gray, the heatmap in colour and the contour of the
region above the detector's ``pixel_threshold_``; given ground-truth masks, the
report adds the per-region overlap (PRO) at that threshold
(:func:`anomem.reports.pixel_metrics.pro_at`).  Every file is written atomically.
"""

from __future__ import annotations

import csv
import html
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_curve

from anomem.base import MapDetector
from anomem.data.folders import read_image
from anomem.heatmaps import resize_maps
from anomem.reports.pixel_metrics import pro_at
from anomem.serialization import atomic_write_bytes, atomic_write_text

#: Overlays are enlarged (nearest neighbour, an integer factor) to at least this many pixels
#: on their longer side.
OVERLAY_MIN_SIDE = 128
HEAT_ALPHA = 0.5
#: Colour of the contour of the region above the pixel threshold (cyan: inferno has none).
CONTOUR_RGB = (0, 255, 255)
#: Weights of R, G, B in the gray the heatmap is blended over (ITU-R BT.601 luma).
LUMA = np.array([0.299, 0.587, 0.114])
#: Said once when a detector has no pixel threshold to draw.
NO_CONTOUR = ("this model file has no pixel threshold (it was written before pixel thresholds "
              "existed): the heatmaps show no contour; fit the model again to get one")


def overlay(image: torch.Tensor | np.ndarray, heat: np.ndarray, low: float, high: float,
            threshold: float | None = None) -> np.ndarray:
    """A uint8 (3, H, W) image in gray with its (H, W) heatmap blended over it in colour
    (``low``..``high`` spans the colour map) and, unless ``threshold`` is None, the contour of
    the region where the heatmap is above it; uint8 (H', W', 3), enlarged by an integer factor
    (nearest neighbour) to at least :data:`OVERLAY_MIN_SIDE` pixels on the longer side."""
    gray = (np.asarray(image).transpose(1, 2, 0).astype(np.float64) / 255.0) @ LUMA
    colour = colormaps["inferno"](np.clip((heat - low) / max(high - low, 1e-12), 0.0, 1.0))[..., :3]
    blend = (1.0 - HEAT_ALPHA) * gray[..., None] + HEAT_ALPHA * colour
    scale = max(1, -(-OVERLAY_MIN_SIDE // max(blend.shape[:2])))
    out = np.round(blend * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    if threshold is not None:
        region = (np.asarray(heat) > threshold).repeat(scale, 0).repeat(scale, 1)
        out[region & ~ndimage.binary_erosion(region)] = CONTOUR_RGB
    return out


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, 3) array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_heatmaps(folder: str | Path, det: MapDetector, names: Sequence[str], files: Sequence[Path],
                   images: torch.Tensor, batch_size: int = 64) -> list[Path]:
    """One ``<name>.png`` overlay per image file in ``folder``, at the file's own size.

    ``images`` are the files' pixels at the model's side, as
    :func:`anomem.data.folders.load_images` read them: their maps at that side, resized
    to each file's size, are :meth:`AnoMem.anomaly_map` of the file's own pixels (one
    computation, not two).  Each file is read again for the gray image under its map.
    One colour scale for all; the contour is at ``det.pixel_threshold_`` (a warning
    says once when the detector has none).
    """
    heat = det.anomaly_map(images, batch_size=batch_size)
    low, high = float(heat.min()), float(heat.max())
    if det.pixel_threshold_ is None:
        warnings.warn(NO_CONTOUR, UserWarning, stacklevel=2)
    out = []
    for name, path, h in zip(names, files, heat, strict=True):
        pixels = read_image(path).transpose(2, 0, 1)
        own = resize_maps(h[None], pixels.shape[1:])[0]
        out.append(atomic_write_bytes(Path(folder) / f"{name}.png", png_bytes(
            overlay(pixels, own, low, high, det.pixel_threshold_))))
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
                      labels: np.ndarray, names: Sequence[str], threshold: float | None = None) -> bytes:
    """A grid: one row per image, the image and its heatmap overlay (contour at ``threshold``)."""
    low, high = float(heat.min()), float(heat.max())
    fig = Figure(figsize=(5, 2.4 * len(images)))
    for i in range(len(images)):
        truth = "anomaly" if labels[i] == 1 else "normal"
        for col, (pic, title) in enumerate(((images[i].permute(1, 2, 0).numpy(), names[i]),
                                            (overlay(images[i], heat[i], low, high, threshold),
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


def _metric_rows(metrics: dict[str, float], threshold: float, reference: str | None
                 ) -> list[tuple[str, str]]:
    """The image-level rows of the metrics table."""
    rows = [("AUROC", f"{metrics['auroc']:.4f}")]
    if reference is not None:
        rows.append((f"AUROC of the reference: {reference}", f"{metrics['reference_auroc']:.4f}"))
    return rows + [
        ("AUPR (average precision)", f"{metrics['aupr']:.4f}"),
        ("FPR at 95% TPR", f"{metrics['fpr_at_95_tpr']:.4f}"),
        (f"F1 at threshold {threshold:.4g}", f"{metrics['f1']:.4f}"),
        ("precision / recall at threshold", f"{metrics['precision']:.4f} / {metrics['recall']:.4f}"),
        ("normals flagged (false rejections)", f"{int(metrics['fp'])} of "
                                               f"{int(metrics['fp'] + metrics['tn'])}"),
        ("anomalies missed", f"{int(metrics['fn'])} of {int(metrics['fn'] + metrics['tp'])}")]


def _pixel_rows(det: MapDetector, images: torch.Tensor, masks: np.ndarray | None) -> list[tuple[str, str]]:
    """With ground-truth masks, the row of the per-region overlap at ``det.pixel_threshold_``."""
    if masks is None:
        return []
    t = det.pixel_threshold_
    if t is None or not np.asarray(masks).any():
        return [("PRO at the pixel threshold", "no pixel threshold in this model" if t is None
                 else "no defect region in the masks")]
    pro, regions = pro_at(masks, det.anomaly_map(images), t)
    return [(f"PRO at pixel threshold {t:.4g} (share of each of {regions} defect regions "
             f"inside the contour, averaged)", f"{pro:.4f}")]


def write_report(folder: str | Path, det: MapDetector, *, labels: np.ndarray, scores: np.ndarray,
                 threshold: float, names: Sequence[str], images: torch.Tensor,
                 metrics: dict[str, float], per_type: list[tuple[str, int, float, float]],
                 summary: str, fmt: str = "html", top: int = 8, reference: str | None = None,
                 notes: Sequence[str] = (), masks: np.ndarray | None = None) -> Path:
    """Write ``report.html`` or ``report.md`` with ``roc.png``, ``histogram.png``, ``top_anomalies.png``.

    Args:
        per_type: rows (anomaly type, images, AUROC vs all normals, detection rate at threshold).
        summary: one paragraph placed under the title (model, data, threshold origin).
        fmt: ``"html"`` or ``"md"``.
        reference: how ``metrics["reference_auroc"]`` was obtained (a training-free
            detector on the same images), shown beside the model's AUROC.
        notes: warnings placed under the summary (e.g. the model is below the reference).
        top: how many of the highest-scoring images to show with heatmaps.
        masks: ground-truth defect pixels, bool (N, S, S) at the side of ``images``: the
            table then gives PRO at ``det.pixel_threshold_`` (:func:`pixel_metrics.pro_at`).

    Returns the path of the report file.
    """
    folder = Path(folder)
    order = np.argsort(-scores, kind="stable")[:top]
    atomic_write_bytes(folder / "roc.png", roc_png(labels, scores, metrics["auroc"]))
    atomic_write_bytes(folder / "histogram.png", histogram_png(labels, scores, threshold))
    sel, pix = torch.as_tensor(order), det.pixel_threshold_
    atomic_write_bytes(folder / "top_anomalies.png", top_anomalies_png(
        images[sel], det.anomaly_map(images[sel]), scores[order], labels[order],
        [names[i] for i in order], pix))
    contour = (f" The cyan line encloses the pixels above the pixel threshold {pix:.4g}."
               if pix is not None else " No contour: this model file has no pixel threshold (fit "
                                       "the model again to get one).")
    blocks: list[Block] = [
        ("h1", "AnoMem evaluation report"), ("p", summary),
        *[("p", f"Warning: {note}.") for note in notes],
        ("h2", "Metrics"),
        ("table", (("metric", "value"), _metric_rows(metrics, threshold, reference)
                   + _pixel_rows(det, images, masks))),
        ("h2", "Per anomaly type"),
        ("table", (("type", "images", "AUROC vs normals", "detected at threshold"),
                   [(t, n, f"{a:.4f}", f"{100 * d:.1f}%") for t, n, a, d in per_type])),
        ("h2", "ROC curve"), ("img", ("roc.png", "ROC curve")),
        ("h2", "Score histograms"), ("img", ("histogram.png", "score histograms")),
        ("h2", f"The {len(order)} most anomalous images"),
        ("p", "Left: the image as the model sees it; right: its anomaly heatmap over it in gray "
              "(deviation from the memory, Eq. 8, fused over scales; brighter = more anomalous, "
              "one colour scale for all)." + contour),
        ("img", ("top_anomalies.png", "most anomalous images with heatmaps")),
        ("table", (("rank", "file", "score", "truth", "decision"),
                   [(r + 1, names[i], f"{scores[i]:.5g}", "anomaly" if labels[i] else "normal",
                     "anomaly" if scores[i] > threshold else "normal") for r, i in enumerate(order)])),
    ]
    return atomic_write_text(folder / f"report.{fmt}", _render(blocks, fmt))
