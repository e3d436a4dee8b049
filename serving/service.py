"""How Serve's gRPC proxy registers the cascade service.

The generated ``add_CascadeServicer_to_server`` would have gRPC parse requests with
``GenerateRequest.FromString``; bytes that are not a valid message then fail inside the proxy with
UNKNOWN and a Python exception text. Here requests that do not parse become a ``MalformedRequest``
that the router answers with INVALID_ARGUMENT, like any other bad request. Serve replaces the
handlers' behaviour (it forwards to the router) but keeps these deserializers.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from serving._proto.cascade.v1 import cascade_pb2 as pb

SERVICE = "cascade.v1.Cascade"


@dataclass
class MalformedRequest:
    """Stands in for a request whose bytes are not a ``cascade.v1.GenerateRequest``."""

    size: int
    error: str


def parse_request(data: bytes):
    try:
        return pb.GenerateRequest.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:  # RuntimeError: the C++ parser on some inputs
        return MalformedRequest(len(data), str(e) or type(e).__name__)


def add_cascade_servicer(servicer, server) -> None:
    """Drop-in for the generated ``add_CascadeServicer_to_server`` (``grpc_servicer_functions``)."""
    out = pb.GenerateResponse.SerializeToString
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate, request_deserializer=parse_request, response_serializer=out),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream, request_deserializer=parse_request, response_serializer=out),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
