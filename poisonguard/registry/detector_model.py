"""MLflow models-from-code entry point for a fitted poisonguard detector.

MLflow stores this file with the model and executes it at load time (`mlflow.models.set_model`), so no pickled
Python object is ever written: the fitted state travels as the JSON artifact `detector` (the report's
detector.json), rebuilt with `load_detector`; the screen's `strata_k` comes in as model_config. Input: a DataFrame with a column `extraction_dir` (extraction folders of a new data drop) and
optionally `base_extraction_dir`; output: one row per sample with `id, p_poison, flagged`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class DetectorModel(PythonModel):
    def load_context(self, context) -> None:
        from poisonguard.registry.scoring import DEFAULT_STRATA_K, load_report_detector

        state = json.loads(Path(context.artifacts["detector"]).read_text())
        self.name, self.detector = load_report_detector(state)
        self.strata_k = int((context.model_config or {}).get("strata_k", DEFAULT_STRATA_K))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from poisonguard.registry.scoring import score_extractions

        bases = model_input["base_extraction_dir"].tolist() if "base_extraction_dir" in model_input else None
        return score_extractions(self.detector, model_input["extraction_dir"].tolist(), bases,
                                 strata_k=self.strata_k)


mlflow.models.set_model(DetectorModel())
