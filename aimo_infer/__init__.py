"""aimo-infer: an inference harness for AI Mathematical Olympiad submissions."""

__version__ = "0.1.0"
