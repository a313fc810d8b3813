"""STAND-IN for kaggle_evaluation/aimo_3_gateway.py (0.9.0): 9 h per call, row count only."""

from __future__ import annotations

import os
from collections.abc import Generator

import polars as pl
from kaggle_evaluation.core import templates

USE_PRIVATE_SET = False  # line 10: True on the private rerun, and then no shuffle
TEST_CSV_ENV = "KAGGLE_EVALUATION_STANDIN_TEST_CSV"  # stand-in only: the rerun's test.csv


class AIMO3Gateway(templates.Gateway):
    def __init__(self, data_paths: tuple[str] | None = None) -> None:  # lines 13-16
        super().__init__(data_paths, file_share_dir=None)
        self.data_paths = data_paths
        self.set_response_timeout_seconds(60 * 60 * 9)

    def unpack_data_paths(self) -> None:  # lines 18-22
        if not self.data_paths:
            self.test_path = os.environ.get(
                TEST_CSV_ENV, '/kaggle/input/ai-mathematical-olympiad-progress-prize-3/test.csv')
        else:
            self.test_path = self.data_paths[0]

    def generate_data_batches(self) -> Generator[tuple[pl.DataFrame, pl.DataFrame], None, None]:
        random_seed = int.from_bytes(os.urandom(4), byteorder='big')  # lines 27-32
        test = pl.read_csv(self.test_path)
        if not USE_PRIVATE_SET:
            test = test.sample(fraction=1.0, shuffle=True, with_replacement=False,
                               seed=random_seed)
        for row in test.iter_slices(n_rows=1):
            yield row, row.select('id')

    def competition_specific_validation(self, prediction_batch: object, row_ids: object,
                                        data_batch: object) -> None:
        pass  # lines 34-35: no check of the id or the answer
