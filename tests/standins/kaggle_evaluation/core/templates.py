"""STAND-IN for kaggle_evaluation/core/templates.py (0.9.0): Gateway and InferenceServer."""

from __future__ import annotations

import abc
import os
import time
import warnings
from collections.abc import Generator
from types import FunctionType
from typing import Any

from kaggle_evaluation.core import base_gateway, relay

_initial_import_time = time.time()  # line 64: the local start-up clock
_issued_startup_time_warning = False


class Gateway(base_gateway.BaseGateway, abc.ABC):  # lines 68-112
    @abc.abstractmethod
    def unpack_data_paths(self) -> None: ...

    @abc.abstractmethod
    def generate_data_batches(self) -> Generator: ...

    @abc.abstractmethod
    def competition_specific_validation(self, prediction_batch: Any, row_ids: Any,
                                        data_batch: Any) -> None: ...


class InferenceServer(abc.ABC):
    def __init__(self, *endpoint_listeners: FunctionType) -> None:  # lines 122-126
        self.server = relay.define_server(*endpoint_listeners)
        self.client = None
        self._startup_limit_seconds = relay.STARTUP_LIMIT_SECONDS
        # Stand-in only: what the gateway container does while the real server blocks.
        self.server.on_wait_for_termination = self._run_rerun_gateway

    def serve(self) -> None:  # lines 128-131
        self.server.start()
        if os.getenv('KAGGLE_IS_COMPETITION_RERUN') is not None:
            self.server.wait_for_termination()  # blocks until the gateway is done

    def _run_rerun_gateway(self) -> None:
        """The competition's gateway with its default paths, as Kaggle runs it in a rerun
        (aimo_3_gateway.py:37-40); it writes result.json and never raises (base_gateway.py:147)."""
        try:
            self.gateway = self._get_gateway_for_test(None)
            self.gateway.run()
        finally:
            self.server.stop(0)

    @abc.abstractmethod
    def _get_gateway_for_test(self, data_paths: Any, file_share_dir: Any = None,
                              *args: Any, **kwargs: Any) -> Gateway: ...

    def run_local_gateway(self, data_paths: tuple[str, ...] | None = None,
                          file_share_dir: str | None = None, *args: Any, **kwargs: Any) -> None:
        """lines 138-158: warn (not fail) past the start-up limit; gateway errors are raised."""
        global _issued_startup_time_warning
        script_elapsed_seconds = time.time() - _initial_import_time
        if script_elapsed_seconds > self._startup_limit_seconds and \
                not _issued_startup_time_warning:
            warnings.warn(f'{int(script_elapsed_seconds)} seconds elapsed before server startup.',
                          category=RuntimeWarning, stacklevel=2)
            _issued_startup_time_warning = True
        self.server.start()
        try:
            self.gateway = self._get_gateway_for_test(data_paths, file_share_dir, *args, **kwargs)
            self.gateway.run()
        except Exception as err:
            raise err from None
        finally:
            self.server.stop(0)
