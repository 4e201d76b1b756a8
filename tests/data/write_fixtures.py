"""Write the model-file and fit-score fixtures of tests/data (see tests/data/README.md)."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem
from anomem.data.digits import load_digits_split
from anomem.serialization import atomic_torch_save, safe_torch_load

torch.set_num_threads(1)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
d = load_digits_split(seed=0)
normals = d.x_train[d.y_train == 0]
anomalies = d.x_train[d.y_train != 0]
probe = d.x_test[:40]
record = {"probe": "load_digits_split(seed=0).x_test[:40]"}

# model files: width 4 and half the memories keep each under 300 KB
tiny = {"width": 4, "mem_sizes": [16, 8], "stage1_epochs": 1, "stage2_epochs": 2}
oc = AnoMem("digits", **tiny).fit(normals[:24], validation_fraction=0.0, progress=False)
oc.save(out / "model_v1_one_class.anomem")
x = np.concatenate([normals[:24], anomalies[:4]])
lab = np.r_[np.zeros(24), np.ones(4)]
semi = AnoMem("digits", **tiny).fit(x, lab, validation_fraction=0.0, progress=False)
semi.save(out / "model_v1_semi.anomem")
record["model_v1_one_class"] = oc.decision_function(probe).tolist()
record["model_v1_semi"] = semi.decision_function(probe).tolist()

# a version-1 file from before the keys of LEGACY_CONFIG: fitted with the values those files
# were made with, then the keys (and the oc_weight buffer) taken out of the file
legacy_values = {"consolidate_factor": 1, "pseudo_anomalies": "none", "score_views": "single",
                 "image_alpha": "last", "head_sampling": "uniform", "oc_evidence": None,
                 "head_deviations": "in_sample"}
legacy = AnoMem("digits", **tiny, **legacy_values).fit(x, lab, validation_fraction=0.0, progress=False)
path = legacy.save(out / "model_v1_legacy.anomem")
blob = safe_torch_load(path, "model file")
for key in legacy_values:
    del blob["config"][key]
del blob["state_dict"]["oc_weight"]
blob.pop("checksum")
atomic_torch_save(blob, path)
record["model_v1_legacy"] = legacy.decision_function(probe).tolist()

# Table 4's k-means prototypes, which version 1 stored as memories.K.centroids
kmeans = AnoMem("digits", **tiny, prototypes="kmeans").fit(normals[:24], validation_fraction=0.0,
                                                           progress=False)
kmeans.save(out / "model_v1_kmeans.anomem")
record["model_v1_kmeans"] = kmeans.decision_function(probe).tolist()
(out / "model_v1_scores.json").write_text(json.dumps(record, indent=1) + "\n")

# fits of today's defaults (digits preset, stage1_epochs=2): one-class and gamma = 0.05
n = 60
k = round(0.05 * n / 0.95)
fits = {"probe": record["probe"], "normals": n, "anomalies": k}
fits["one_class"] = AnoMem("digits", stage1_epochs=2).fit(
    normals[:n], validation_fraction=0.0, progress=False).decision_function(probe).tolist()
x = np.concatenate([normals[:n], anomalies[:k]])
lab = np.r_[np.zeros(n), np.ones(k)]
fits["gamma_0.05"] = AnoMem("digits", stage1_epochs=2).fit(
    x, lab, validation_fraction=0.0, progress=False).decision_function(probe).tolist()
(out / "fit_scores.json").write_text(json.dumps(fits, indent=1) + "\n")
