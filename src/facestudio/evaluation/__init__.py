"""Evaluation: identity similarity with a recogniser the generator never sees, matching, baselines, reports."""
