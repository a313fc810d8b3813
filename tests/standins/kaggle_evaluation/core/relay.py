"""STAND-IN for kaggle_evaluation/core/relay.py (0.9.0): listeners, serialisation, deadlines.

No gRPC: the "server" is a one-worker thread pool in this process and the "client" hands it
requests directly, but every check and failure of the real file is kept (line numbers cited).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import threading
import time
from types import FunctionType
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow
import pyarrow.ipc

DEFAULT_DEADLINE_SECONDS = 60 * 60  # relay.py:66
STARTUP_LIMIT_SECONDS = 60 * 15  # relay.py:72
_POLARS_TYPE_DENYLIST = {pl.Enum, pl.Object, pl.Unknown}  # relay.py:78

# Stand-in only: when the gateway's container started (epoch seconds). On Kaggle it starts with
# the notebook and its first call waits at most STARTUP_LIMIT_SECONDS for the server.
STARTED_AT_ENV = "KAGGLE_EVALUATION_STANDIN_STARTED_AT"
_import_time = time.time()


class GRPCDeadlineError(Exception):  # relay.py:27-28
    pass


class InactiveRpcError(Exception):
    """What grpc raises on the gateway's side when the server's handler raised (the text
    carries "Exception calling application: <message>", which base_gateway.py:427-431 parses)."""


def _serialize(data: Any) -> tuple[str, Any]:
    """relay.py:94-174: only these types cross the wire; anything else is a TypeError."""
    if isinstance(data, np.generic):  # relay.py:107-118, checked first
        assert data.shape == ()
        assert isinstance(data, (np.number, np.bool_))
        buffer = io.BytesIO()
        np.save(buffer, data, allow_pickle=False)
        return "numpy_scalar", buffer.getvalue()
    if isinstance(data, (str, bool, int, float)) or data is None:  # relay.py:119-128
        return "primitive", data
    if isinstance(data, (list, tuple)):  # relay.py:130-133
        return type(data).__name__, [_serialize(item) for item in data]
    if isinstance(data, dict):  # relay.py:134-140
        for key in data:
            if not isinstance(key, str):
                raise TypeError(f'KaggleEvaluation only supports dicts with keys of type str, '
                                f'found {type(key)}.')
        return "dict", {key: _serialize(value) for key, value in data.items()}
    if isinstance(data, pd.DataFrame):  # relay.py:142-145
        buffer = io.BytesIO()
        data.to_parquet(buffer, index=False)
        return "pandas_dataframe", buffer.getvalue()
    if isinstance(data, pl.DataFrame):  # relay.py:146-156
        banned = _POLARS_TYPE_DENYLIST.intersection({d.base_type() for d in data.dtypes})
        if banned:
            raise TypeError(f'Unsupported Polars data type(s): {banned}')
        table = data.to_arrow()
        buffer = io.BytesIO()
        with pyarrow.ipc.new_stream(buffer, table.schema) as writer:
            writer.write_table(table)
        return "polars_dataframe", buffer.getvalue()
    if isinstance(data, pd.Series):  # relay.py:157-161
        buffer = io.BytesIO()
        pd.DataFrame(data).to_parquet(buffer, index=False)
        return "pandas_series", buffer.getvalue()
    if isinstance(data, pl.Series):  # relay.py:162-166: through a one-column frame's parquet
        buffer = io.BytesIO()
        pl.DataFrame(data).write_parquet(buffer, statistics=False)
        return "polars_series", buffer.getvalue()
    if isinstance(data, np.ndarray):  # relay.py:167-170
        buffer = io.BytesIO()
        np.save(buffer, data, allow_pickle=False)
        return "numpy_array", buffer.getvalue()
    if isinstance(data, io.BytesIO):  # relay.py:171-172
        return "bytes_io", data.getvalue()
    raise TypeError(f'Type {type(data)} not supported for KaggleEvaluation.')  # relay.py:174


def _deserialize(payload: tuple[str, Any]) -> Any:
    """relay.py:177-232."""
    kind, value = payload
    if kind == "primitive":
        return value
    if kind in ("list", "tuple"):
        items = [_deserialize(item) for item in value]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {key: _deserialize(item) for key, item in value.items()}
    if kind == "pandas_dataframe":
        return pd.read_parquet(io.BytesIO(value))
    if kind == "polars_dataframe":  # relay.py:210-213
        with pyarrow.ipc.open_stream(value) as reader:
            return pl.from_arrow(reader.read_all())
    if kind == "pandas_series":
        frame = pd.read_parquet(io.BytesIO(value))
        return pd.Series(frame[frame.columns[0]])
    if kind == "polars_series":  # relay.py:218-219
        return pl.Series(pl.read_parquet(io.BytesIO(value)))
    if kind == "numpy_array":
        return np.load(io.BytesIO(value), allow_pickle=False)
    if kind == "numpy_scalar":  # relay.py:222-228
        data = np.load(io.BytesIO(value), allow_pickle=False)
        return data.dtype.type(data)
    if kind == "bytes_io":
        return io.BytesIO(value)
    raise TypeError(f'Found unknown Payload case {kind}')


class Server:
    """The gRPC server of define_server: one worker thread (relay.py:379), listeners by name
    (relay.py:328), NotImplementedError for an unknown endpoint (relay.py:347-348)."""

    listening: Server | None = None  # stand-in for the port the gateway connects to

    def __init__(self, listeners: tuple[FunctionType, ...]) -> None:
        self.listeners_map = {func.__name__: func for func in listeners}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.started_at: float | None = None
        self.on_wait_for_termination: Any = None  # set by templates.InferenceServer
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            self.started_at = time.time()
            Server.listening = self

    def stop(self, grace: float | None) -> None:
        with self._lock:
            if Server.listening is self:
                Server.listening = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_for_termination(self) -> None:
        """In a rerun the gateway runs in another container; here it runs now, then returns."""
        if self.on_wait_for_termination is not None:
            self.on_wait_for_termination()

    def _handle(self, request: tuple[str, list[Any], dict[str, Any]]) -> tuple[str, Any]:
        name, args, kwargs = request
        if name not in self.listeners_map:  # relay.py:347-348
            raise NotImplementedError(f'No listener for {name} was registered.')
        values = [_deserialize(a) for a in args]  # relay.py:350-351
        named = {key: _deserialize(value) for key, value in kwargs.items()}
        return _serialize(self.listeners_map[name](*values, **named))  # relay.py:352-353

    def submit(self, request: tuple[str, list[Any], dict[str, Any]]) \
            -> concurrent.futures.Future[tuple[str, Any]]:
        assert self._pool is not None
        return self._pool.submit(self._handle, request)


class Client:
    """relay.py:238-315: the first call has no deadline, later ones ``endpoint_deadline_seconds``."""

    def __init__(self, channel_address: str = 'localhost') -> None:
        self.channel_address = channel_address
        self._made_first_connection = False
        self.endpoint_deadline_seconds = DEFAULT_DEADLINE_SECONDS

    def _server_or_fail(self) -> Server:
        """relay.py:266-285: the first call waits STARTUP_LIMIT_SECONDS for a server, then
        raises. In-process, the server must already listen and have started in time."""
        server = Server.listening
        container_started = float(os.environ.get(STARTED_AT_ENV, _import_time))
        if server is None or server.started_at is None or \
                server.started_at - container_started > STARTUP_LIMIT_SECONDS:
            raise RuntimeError(
                f'Failed to connect to server after waiting {STARTUP_LIMIT_SECONDS} seconds')
        return server

    def send(self, name: str, *args: Any, **kwargs: Any) -> Any:
        request = (name, [_serialize(a) for a in args],  # relay.py:294-296
                   {key: _serialize(value) for key, value in kwargs.items()})
        if self._made_first_connection:
            server = Server.listening
            if server is None:
                raise InactiveRpcError('StatusCode.UNAVAILABLE: the server went away')
            timeout: float | None = self.endpoint_deadline_seconds  # relay.py:257
        else:
            server = self._server_or_fail()
            timeout = None  # relay.py:273: the very first call has no deadline
        future = server.submit(request)
        try:
            response = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise GRPCDeadlineError() from None  # relay.py:258-260
        except Exception as exc:  # the handler raised: grpc reports it as an RPC error
            raise InactiveRpcError(
                f'<_InactiveRpcError of RPC that terminated with: status = StatusCode.UNKNOWN '
                f'details = "Exception calling application: {exc}">') from None
        self._made_first_connection = True  # relay.py:274
        return _deserialize(response)

    def close(self) -> None:
        pass


def define_server(*endpoint_listeners: FunctionType) -> Server:
    """relay.py:357-383: plain named functions only (a bound method or a lambda fails)."""
    if not endpoint_listeners:  # relay.py:371-372
        raise ValueError('Must pass at least one endpoint listener, e.g. `predict`')
    for func in endpoint_listeners:
        if not isinstance(func, FunctionType):  # relay.py:374-375
            raise ValueError(
                f'Endpoint listeners passed to `serve` must be functions, got {type(func)}')
        if func.__name__ == '<lambda>':  # relay.py:376-377
            raise ValueError('Functions passed as endpoint listeners must be named')
    return Server(endpoint_listeners)
