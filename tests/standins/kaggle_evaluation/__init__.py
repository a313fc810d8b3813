"""STAND-IN for Kaggle's ``kaggle_evaluation`` package (AIMO-3: 0.9.0; AIMO-2: 0.3.0): NOT the real one.

It runs in one process without gRPC, but makes every check the real code makes, each marked
with the real file and line it comes from (paths relative to the real package folder):
the listener must be a named ``types.FunctionType``; the gateway sends one ``pl.Series`` per
CSV column positionally; arguments and results go through the same serialisation (parquet for
a Series, Arrow IPC for a DataFrame, an allow-list of types); the first call has no deadline
and later ones the competition's; the server must be up within 900 s; AIMO-3 checks the row
count only and writes the ids itself, AIMO-2 checks the id column; ``USE_PRIVATE_SET`` means
no shuffle. Tests run against it with ``tests.standins.standin_packages()``.
"""

__version__ = "0.9.0"
STANDIN = True
