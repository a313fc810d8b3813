"""STAND-IN for kaggle_evaluation/aimo_3_inference_server.py (0.9.0)."""

from kaggle_evaluation import aimo_3_gateway
from kaggle_evaluation.core import templates


class AIMO3InferenceServer(templates.InferenceServer):
    def _get_gateway_for_test(self, data_paths=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        return aimo_3_gateway.AIMO3Gateway(data_paths)
