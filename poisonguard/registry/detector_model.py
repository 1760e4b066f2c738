"""MLflow models-from-code entry point for a fitted poisonguard detector.

MLflow stores this file with the model and executes it at load time (`mlflow.models.set_model`), so no pickled
Python object is ever written: the fitted state travels as the JSON artifact `detector`, rebuilt with
`load_detector`. Input: a DataFrame with a column `extraction_dir` (extraction folders of a new data drop) and
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
        from poisonguard.detect import load_detector

        self.detector = load_detector(json.loads(Path(context.artifacts["detector"]).read_text()))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from poisonguard.registry.scoring import score_extractions

        bases = model_input["base_extraction_dir"].tolist() if "base_extraction_dir" in model_input else None
        return score_extractions(self.detector, model_input["extraction_dir"].tolist(), bases)


mlflow.models.set_model(DetectorModel())
