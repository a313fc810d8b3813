"""STAND-IN package (tests only), not vLLM."""
