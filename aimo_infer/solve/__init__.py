"""Solve one problem: prompt, seeded streams, code cells, answers, votes and early stops."""
