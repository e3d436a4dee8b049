"""The fronts: each turns its own wire format into the walk's ``CascadeRequest`` and the walk's ``Outcome``
(as the typed ``CascadeResponse`` of ``outcome.py``) back into its wire format, over the one
``CascadeService`` (``service.py``: gates, walks, records). ``grpc_api.py``: ``cascade.v1`` messages and the
``Generate``/``GenerateStream`` handlers; ``openai_api.py``: OpenAI requests -> walks, outcomes -> the response
models of ``openai_protocol.py``; ``http.py``: the HTTP exchange (body limits, JSON, Server-Sent Events);
``status.py``: the one table from an error to a gRPC status, an HTTP status and an OpenAI error type.

May import: ``serving.core``, the generated protobuf messages, pydantic. Not Ray, not grpc (the
servicer that registers with Serve's gRPC proxy lives in ``serving.serve.grpc_service``), not FastAPI.
"""
