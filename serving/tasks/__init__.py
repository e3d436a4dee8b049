"""Labelled task generators (pure Python, no Ray, no torch)."""
