"""Scorers the eval tasks use: checks, text metrics, tools, multiple choice, code, judge, harness."""
