"""How Serve's gRPC proxy registers the cascade service (``grpc_servicer_functions``).

The generated ``add_CascadeServicer_to_server`` would have gRPC parse requests with
``GenerateRequest.FromString``; bytes that are not a valid message then fail inside the proxy with
UNKNOWN and a Python exception text. Here they become a ``MalformedRequest``
(``serving.fronts.grpc_api``) that the Router answers with INVALID_ARGUMENT. Serve replaces the
handlers' behaviour (it forwards to the Router) but keeps these deserializers.
"""

from __future__ import annotations

import grpc

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.fronts.grpc_api import SERVICE, parse_request


def add_cascade_servicer(servicer, server) -> None:
    """Drop-in for the generated ``add_CascadeServicer_to_server``."""
    out = pb.GenerateResponse.SerializeToString
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate, request_deserializer=parse_request, response_serializer=out
        ),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream, request_deserializer=parse_request, response_serializer=out
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
