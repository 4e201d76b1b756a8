"""Training stages of AnoMem: stage 1 (contrasted memory) and stage 2 (anomaly scoring)."""
