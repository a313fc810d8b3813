"""STAND-IN for kaggle_evaluation/core/base_gateway.py (0.9.0): validation, submission file,
result.json and the mapping of server failures to Kaggle's error types (lines cited)."""

from __future__ import annotations

import enum
import json
import os
import sys
import traceback
from socket import gaierror
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from kaggle_evaluation.core import relay

_DATAFRAME_LIKE_TYPES = (pl.DataFrame, pl.Series, pd.DataFrame, pd.Series)  # line 23
_VALID_ROW_ID_SCALAR_TYPES = (str, int)  # line 24
_VALID_ROW_ID_TYPES = _VALID_ROW_ID_SCALAR_TYPES + _DATAFRAME_LIKE_TYPES  # line 25
_FILE_SHARE_DIR = '/kaggle/shared/'  # line 27
IS_RERUN = os.getenv('KAGGLE_IS_COMPETITION_RERUN') is not None  # line 28: read at import


class GatewayRuntimeErrorType(enum.Enum):  # lines 31-45
    UNSPECIFIED = 0
    SERVER_NEVER_STARTED = 1
    SERVER_CONNECTION_FAILED = 2
    SERVER_RAISED_EXCEPTION = 3
    SERVER_MISSING_ENDPOINT = 4
    GATEWAY_RAISED_EXCEPTION = 5
    INVALID_SUBMISSION = 6
    GRPC_DEADLINE_EXCEEDED = 7


class GatewayRuntimeError(Exception):  # lines 48-53
    def __init__(self, error_type: GatewayRuntimeErrorType, error_details: str | None = None):
        super().__init__(f'{error_type.name}: {error_details}')
        self.error_type = error_type
        self.error_details = error_details


class BaseGateway:
    def __init__(self, data_paths: tuple[str] | None = None,
                 file_share_dir: str | None = _FILE_SHARE_DIR,
                 target_column_name: str | None = None,
                 row_id_column_name: str | None = None) -> None:
        # line 71: the gateway is a client of the user's server
        self.client = relay.Client('inference_server' if IS_RERUN else 'localhost')
        self.server = None
        self.file_share_dir = file_share_dir
        self.data_batch_counter: int | None = None
        self.data_paths = data_paths
        self.target_column_name = target_column_name
        self.row_id_column_name = row_id_column_name

    def set_response_timeout_seconds(self, timeout_seconds: int) -> None:  # lines 97-101
        self.timeout_seconds = timeout_seconds
        self.client.endpoint_deadline_seconds = timeout_seconds  # after the first response

    def get_all_predictions(self) -> tuple[list[Any], list[Any]]:  # lines 103-114
        all_predictions, all_row_ids = [], []
        self.data_batch_counter = 0
        for data_batch, row_ids in self.generate_data_batches():  # type: ignore[attr-defined]
            predictions = self.predict(*data_batch)  # line 108: a DataFrame -> one Series/column
            self.competition_agnostic_validation(predictions, row_ids)
            self.competition_specific_validation(predictions, row_ids, data_batch)  # type: ignore[attr-defined]
            all_predictions.append(predictions)
            all_row_ids.append(row_ids)
            self.data_batch_counter += 1
        return all_predictions, all_row_ids

    def predict(self, *args: Any, **kwargs: Any) -> Any:  # lines 116-126
        try:
            return self.client.send('predict', *args, **kwargs)
        except Exception as e:
            self.handle_server_error(e, 'predict')

    def run(self) -> None:  # lines 128-151
        error = None
        try:
            self.unpack_data_paths()  # type: ignore[attr-defined]
            predictions, row_ids = self.get_all_predictions()
            self.write_submission(predictions, row_ids)
        except GatewayRuntimeError as gre:
            error = gre
        except Exception:
            error_str = ''.join(traceback.format_exception(*sys.exc_info()))
            error = GatewayRuntimeError(GatewayRuntimeErrorType.GATEWAY_RAISED_EXCEPTION, error_str)
        self.client.close()
        if self.server:
            self.server.stop(0)
        if IS_RERUN:
            self.write_result(error)  # line 148: a rerun records the error, never raises
        elif error:
            raise error  # line 151: local testing

    def competition_agnostic_validation(self, prediction_batch: Any, row_ids: Any) -> None:
        """lines 153-201: one prediction row per row id; nothing about the values."""
        if prediction_batch is None:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                      'No prediction received')
        num_received_rows = None
        for primitive_type in [int, float, str, bool, np.int_]:  # lines 173-178
            if isinstance(prediction_batch, primitive_type):
                num_received_rows = 1
        if num_received_rows is None:
            if not isinstance(prediction_batch, _DATAFRAME_LIKE_TYPES):  # lines 181-184
                raise GatewayRuntimeError(
                    GatewayRuntimeErrorType.INVALID_SUBMISSION,
                    f'Invalid prediction data type, received: {type(prediction_batch)}')
            num_received_rows = len(prediction_batch)
        if not isinstance(row_ids, _VALID_ROW_ID_TYPES):
            raise GatewayRuntimeError(GatewayRuntimeErrorType.GATEWAY_RAISED_EXCEPTION,
                                      f'Invalid row ID type {type(row_ids)}')
        num_expected_rows = 1 if isinstance(row_ids, _VALID_ROW_ID_SCALAR_TYPES) else len(row_ids)
        if num_expected_rows == 0:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.GATEWAY_RAISED_EXCEPTION,
                                      'Missing row IDs for batch')
        if num_received_rows != num_expected_rows:  # lines 198-201
            raise GatewayRuntimeError(
                GatewayRuntimeErrorType.INVALID_SUBMISSION,
                f'Invalid predictions: expected {num_expected_rows} rows but received '
                f'{num_received_rows}')

    def _convert_to_df(self, data_batches: Any, series_name: str | None = None) -> Any:
        """lines 341-378: list -> Series -> DataFrame; unnamed scalars need a column name."""
        if isinstance(data_batches, list):
            if isinstance(data_batches[0], (pd.DataFrame, pd.Series)):
                data_batches = pd.concat(data_batches, ignore_index=True)
            elif isinstance(data_batches[0], (pl.DataFrame, pl.Series)):
                try:
                    data_batches = pl.concat(data_batches, how='vertical_relaxed')
                except pl.exceptions.SchemaError:
                    raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                              'Inconsistent prediction types') from None
                except pl.exceptions.ComputeError:
                    raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                              'Inconsistent prediction column counts') from None
            else:
                data_batches = pl.Series(data_batches)
        if isinstance(data_batches, (pl.Series, pd.Series)) and not data_batches.name:
            if not series_name:  # lines 356-363
                raise GatewayRuntimeError(
                    GatewayRuntimeErrorType.GATEWAY_RAISED_EXCEPTION,
                    'The gateway fields self.target_column_name and/or self.row_id_column_name '
                    'must be set in order to use scalar data_batches or unnamed Pandas/Polars '
                    'series')
            data_batches = data_batches.rename(series_name)
        if isinstance(data_batches, pl.Series):
            data_batches = pl.DataFrame(data_batches)
        elif isinstance(data_batches, pd.Series):
            data_batches = pd.DataFrame(data_batches)
        if isinstance(data_batches, (pl.DataFrame, pd.DataFrame)):
            return data_batches
        raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                  f'Invalid data_batches type {type(data_batches)}')

    def write_submission(self, predictions: Any, row_ids: Any) -> None:
        """lines 380-403: the gateway's row ids overwrite the returned ones; ids come first."""
        submission = self._convert_to_df(predictions, self.target_column_name)
        row_ids = self._convert_to_df(row_ids, self.row_id_column_name)
        desired = row_ids.columns + [c for c in submission.columns if c not in row_ids.columns]
        if isinstance(submission, pd.DataFrame):
            submission.loc[:, row_ids.columns] = row_ids
            submission[desired].to_parquet('submission.parquet', index=False)
        elif isinstance(submission, pl.DataFrame):
            submission = submission.with_columns(row_ids)
            submission.select(desired).write_parquet('submission.parquet')

    def write_result(self, error: GatewayRuntimeError | None = None) -> None:  # lines 405-416
        result: dict[str, Any] = {'Succeeded': error is None}
        if error is not None:
            result['ErrorType'] = error.error_type.value
            result['ErrorName'] = error.error_type.name
            result['ErrorDetails'] = str(error.error_details[:8000]) \
                if error.error_details else None
        with open('result.json', 'w') as f_open:
            json.dump(result, f_open)

    def handle_server_error(self, exception: Exception, endpoint: str) -> None:
        """lines 418-437: server-side failures as Kaggle's error types."""
        text = str(exception)
        if isinstance(exception, (gaierror, RuntimeError)) and \
                'Failed to connect to server after waiting' in text:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_NEVER_STARTED) from None
        if f'No listener for {endpoint} was registered' in text:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_MISSING_ENDPOINT,
                                      f'Server did not register a listener for {endpoint}') \
                from None
        if 'Exception calling application' in text:
            message = text.split('Exception calling application: ', 1)[1].rstrip('">')
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_RAISED_EXCEPTION,
                                      message) from None
        if isinstance(exception, relay.InactiveRpcError):
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_CONNECTION_FAILED, text) \
                from None
        if isinstance(exception, relay.GRPCDeadlineError):
            raise GatewayRuntimeError(GatewayRuntimeErrorType.GRPC_DEADLINE_EXCEEDED, text) \
                from None
        raise exception
