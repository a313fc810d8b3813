"""Engine build scripts: linear merge, drafter data, calibration set, and TensorRT-LLM builds.

``python -m engines.merge``, ``python -m engines.drafter``, ``python -m engines.build`` (recipes in
``engines/recipes/``); every build writes ``engine.json`` (``aimo_infer.manifest``).
"""
