"""STAND-IN for AIMO-2's kaggle_evaluation/aimo_2_inference_server.py (0.3.0).

0.3.0's define_server accepted any callable (0.3.0 core/relay.py:327-328); the stand-in keeps
0.9.0's stricter FunctionType check for both, since one ``predict`` must serve either.
"""

from kaggle_evaluation import aimo_2_gateway
from kaggle_evaluation.core import templates


class AIMO2InferenceServer(templates.InferenceServer):
    def _get_gateway_for_test(self, data_paths=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        return aimo_2_gateway.AIMO2Gateway(data_paths)
