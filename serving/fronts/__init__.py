"""Wire mappings only: each front turns its own wire format into the walk's ``CascadeRequest`` and the
walk's ``Outcome`` back into its wire format. ``grpc_api.py``: ``cascade.v1`` messages; ``openai_api.py``:
OpenAI JSON and Server-Sent Events; ``status.py``: the one table from an error to a gRPC status, an
HTTP status and an OpenAI error type, for both fronts.

May import: ``serving.core``, the generated protobuf messages, pydantic. Not Ray, not grpc (the
servicer that registers with Serve's gRPC proxy lives in ``serving.serve.grpc_service``), not FastAPI.
"""
