"""Offline evaluation: labelled data, correctness metrics, deferral curves. Pure code, no Ray."""
