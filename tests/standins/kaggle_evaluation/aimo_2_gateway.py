"""STAND-IN for AIMO-2's kaggle_evaluation/aimo_2_gateway.py (0.3.0) on the 0.9.0 core.

AIMO-2 differs from AIMO-3 in three ways kept here: 30 min per call (aimo_2_gateway.py:15),
always shuffled (lines 30-32), and the 0.3.0 core checks the returned id column against the
served one and writes the predictions as returned (0.3.0 core/base_gateway.py:52-79, 145-163).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import polars as pl
from kaggle_evaluation.core import base_gateway, templates

TEST_CSV_ENV = "KAGGLE_EVALUATION_STANDIN_TEST_CSV"


class AIMO2Gateway(templates.Gateway):
    def __init__(self, data_paths: tuple[str] | None = None) -> None:
        super().__init__(data_paths, file_share_dir=None)
        self.data_paths = data_paths
        self.set_response_timeout_seconds(60 * 30)  # line 15

    def unpack_data_paths(self) -> None:
        if not self.data_paths:
            self.test_path = os.environ.get(
                TEST_CSV_ENV, '/kaggle/input/ai-mathematical-olympiad-progress-prize-2/test.csv')
        else:
            self.test_path = self.data_paths[0]

    def generate_data_batches(self) -> Generator[tuple[pl.DataFrame, pl.DataFrame], None, None]:
        random_seed = int.from_bytes(os.urandom(4), byteorder='big')
        test = pl.read_csv(self.test_path).sample(fraction=1.0, shuffle=True,
                                                  with_replacement=False, seed=random_seed)
        for row in test.iter_slices(n_rows=1):
            yield row, row.select('id')

    def competition_specific_validation(self, prediction_batch: Any, row_ids: Any,
                                        data_batch: Any) -> None:
        """0.3.0 core/base_gateway.py:69-79: the first id column must match the served ids."""
        colname = row_ids.columns[0]
        if not hasattr(prediction_batch, 'columns') or colname not in prediction_batch.columns:
            raise base_gateway.GatewayRuntimeError(
                base_gateway.GatewayRuntimeErrorType.INVALID_SUBMISSION,
                f'Prediction missing column {colname}')
        if not pl.Series(prediction_batch[colname]).equals(pl.Series(row_ids[colname])):
            raise base_gateway.GatewayRuntimeError(
                base_gateway.GatewayRuntimeErrorType.INVALID_SUBMISSION,
                f'Invalid values for {colname} in batch of predictions.')

    def write_submission(self, predictions: Any, row_ids: Any) -> None:
        """0.3.0 core/base_gateway.py:145-163: the predictions as returned."""
        frame = self._convert_to_df(predictions, self.target_column_name)
        if isinstance(frame, pl.DataFrame):
            frame.write_parquet('submission.parquet')
        else:
            frame.to_parquet('submission.parquet', index=False)
