"""Evaluate locally: dry runs, grading, reports, and the policy simulator."""
