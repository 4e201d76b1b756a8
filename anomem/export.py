"""Export a fitted detector's scoring network (AnoMemModel.forward) to TorchScript or ONNX.

The exported graph maps a float32 batch (N, 3, S, S) of RGB images in [0, 1],
already resized to the model's side S, to the fused anomaly scores (N,) of
Eq. 13, higher = more anomalous; N is free.  It is the same computation as
:meth:`anomem.detector.AnoMem.decision_function` after its image conversion:
the Hopfield retrieval (Eq. 1) freezes converged queries with ``torch.where``
and only skips the early exit under tracing, so the traced graph runs every
step and gives identical scores.  :func:`verify_export` checks this on given
images after every export, to ``TOLERANCE`` (1e-4) of the scores' scale: the
exported runtime's kernels round differently from torch's, and float32
rounding is relative to the magnitudes involved (see :func:`score_scale`).
Images at a near-tie of nearest-pattern retrieval (:func:`well_posed`) are left
out of that comparison: rounding may pick either pattern there in any runtime,
and the semi-supervised heads score the two differently (measured: 0.07 on a
score scale of 2.3, for an image whose two best patterns were 6e-8 apart).

An :class:`anomem.AnoMemEnsemble` exports as one graph (:class:`EnsembleScores`):
every member's network and the mean of their standardised scores, as
:meth:`anomem.AnoMemEnsemble.decision_function` computes it.

The model's metadata (side S, threshold, input layout, anomem version) travels
inside the file: TorchScript extra file ``anomem.json``, ONNX ``metadata_props``.

Example:
    >>> det = AnoMem.load("parts.anomem")                       # doctest: +SKIP
    >>> export_model(det, "parts.onnx", "onnx")                 # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anomem import __version__
from anomem.detector import AnoMem
from anomem.ensemble import AnoMemEnsemble
from anomem.errors import AnoMemError, InvalidInputError, ModelFileError, RequiresFitting
from anomem.serialization import atomic_write_bytes
from anomem.stages.common import RunOptions, map_batches

Format = Literal["torchscript", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 17
#: Exported and Python scores may differ by this fraction of :func:`score_scale` (float32
#: rounding in two sets of kernels, measured at 1e-6 to 3e-5 of the scale).
TOLERANCE = 1e-4
#: Images whose nearest-pattern retrieval is this close to a tie at some position are not
#: compared (:func:`well_posed`): onnxruntime's attentions differ from torch's by float32
#: rounding (measured: at most 5e-7), which can swap two patterns closer than twice that.
TIE_MARGIN = 1e-5


Detector = AnoMem | AnoMemEnsemble


class ExportError(AnoMemError, RuntimeError):
    """An export failed or its scores differ from the Python model's."""


class EnsembleScores(torch.nn.Module):
    """An ensemble's scoring graph: the mean over members of (score - loc) / scale, each
    member's Eq. 13 score standardised as :class:`anomem.AnoMemEnsemble` standardises it."""

    def __init__(self, networks: list[torch.nn.Module], loc: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(networks)
        self.register_buffer("loc", torch.as_tensor(np.asarray(loc), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([m(x) for m in self.members])
        return ((scores - self.loc[:, None]) / self.scale[:, None]).mean(0)


def _members(det: Detector) -> list[AnoMem]:
    """The fitted single-network detectors inside ``det`` (``det`` itself for an AnoMem)."""
    if isinstance(det, AnoMemEnsemble):
        members = getattr(det, "members_", None)
    else:
        members = None if getattr(det, "network_", None) is None else [det]
    if members is None:
        raise RequiresFitting(f"the {type(det).__name__} is not fitted; fit it or load it from its "
                              f"model file first")
    return members


def scoring_module(det: Detector) -> torch.nn.Module:
    """The CPU module whose forward is ``det``'s score of float32 images in [0, 1] at its side."""
    members = _members(det)
    if isinstance(det, AnoMem):
        return det.network_.to("cpu").eval()
    return EnsembleScores([m.network_.to("cpu") for m in members], det.score_loc_,
                          det.score_scale_).eval()


def metadata(det: Detector) -> dict[str, str]:
    """What a deployment needs besides the graph: input layout, side, threshold, versions."""
    side = det.config_.backbone.image_size
    return {"anomem_version": __version__, "image_size": str(side),
            "threshold": "" if det.threshold_ is None else repr(float(det.threshold_)),
            "input": f"float32 (N, 3, {side}, {side}) RGB in [0, 1]",
            "output": "float32 (N,) anomaly score, higher = more anomalous; anomaly when > threshold"}


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'anomem[export]'") from None
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                      input_names=["images"], output_names=["scores"],
                      dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString()


def export_model(det: Detector, path: str | Path, fmt: Format) -> Path:
    """Trace ``det``'s scoring network (an ensemble's: :class:`EnsembleScores`) on the CPU and
    write it to ``path`` (atomically)."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"export format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    model = scoring_module(det)
    side = det.config_.backbone.image_size
    example = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    meta = metadata(det)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer/exporter chatter; correctness is verified below
            if fmt == "onnx":
                data = _onnx_bytes(model, example, meta)
            else:
                buf = io.BytesIO()
                torch.jit.save(torch.jit.trace(model, example, check_trace=False), buf,
                               _extra_files={"anomem.json": json.dumps(meta)})
                data = buf.getvalue()
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - an exporter failure becomes one clear line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{fmt} export failed ({first}); the Python model still works: "
                          f"use 'anomem score' or try the other format") from None
    return atomic_write_bytes(path, data)


def exported_scores(path: str | Path, fmt: Format, images: np.ndarray) -> np.ndarray:
    """Run an exported file on float32 (N, 3, S, S) images in [0, 1]; scores (N,)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"exported model {str(p)!r} does not exist; check the path")
    x = np.ascontiguousarray(images, dtype=np.float32)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("running an ONNX model needs onnxruntime: pip install "
                              "'anomem[export]'") from None
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {"images": x})[0], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still works
        module = torch.jit.load(str(p), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy().astype(np.float64)


def score_scale(det: Detector, images: torch.Tensor, scores: np.ndarray | None = None) -> float:
    """The magnitude that float32 rounding of ``det``'s scores on ``images`` is relative to.

    The largest |image score| or |per-scale score| (Eq. 13 sums the alpha-weighted
    scale scores, so a small image score can come from large terms), at least 1.
    ``scores``: the image scores when already computed (``det.decision_function(images)``).
    An ensemble's: the largest of its members' scales, each divided by the member's
    standardiser (the rounding of a member's score is divided by it too), at least 1.
    """
    if isinstance(det, AnoMemEnsemble):
        return max(1.0, *(score_scale(m, images) / sd for m, sd in
                          zip(_members(det), det.score_scale_, strict=True)))
    image = det.decision_function(images) if scores is None else scores
    terms = np.concatenate([np.ravel(image), det.scale_scores(images).ravel()])
    return max(1.0, float(np.abs(terms).max()))


def well_posed(det: Detector, images: torch.Tensor) -> np.ndarray:
    """(N,) bool: which uint8 ``images`` are ``TIE_MARGIN`` or more from a retrieval tie
    everywhere (in every member of an ensemble)."""
    keep = np.ones(len(images), dtype=bool)
    for member in _members(det):
        model = member.network_
        opts = RunOptions(device=next(model.parameters()).device)
        margins = map_batches(model, images, opts, lambda m, x: m.retrieval_margin(x))
        keep &= (torch.cat(margins) >= TIE_MARGIN).cpu().numpy()
    return keep


def verify_export(det: Detector, path: str | Path, fmt: Format, images: torch.Tensor,
                  rtol: float = TOLERANCE) -> float:
    """Largest |exported - Python| score on the :func:`well_posed` images of uint8 (N, 3, S, S)
    ``images``; raises beyond ``rtol`` times :func:`score_scale`, or when no image is well posed."""
    keep = well_posed(det, images)
    if not keep.any():
        raise ExportError(f"every one of the {len(images)} check images lies at a tie of the "
                          f"memory's nearest-pattern retrieval, so the exported {fmt} model cannot "
                          f"be checked; pass other images with --check")
    scores = det.decision_function(images)
    got = exported_scores(path, fmt, images.float().div(255).numpy())[keep]
    diff = float(np.abs(got - scores[keep]).max())
    scale = score_scale(det, images, scores)
    if not diff <= rtol * scale:
        raise ExportError(f"exported {fmt} model {str(path)!r} scores differ from the Python model "
                          f"by {diff:.3g} (> {rtol:g} of the scores' scale {scale:.3g}); do not "
                          f"deploy it, please report this")
    return diff
