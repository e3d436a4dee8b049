"""Thin Ray Serve wrappers: a Tier deployment per model, and the Router (gRPC ingress)."""
