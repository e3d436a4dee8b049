"""A small gRPC client for the cascade (used by the CLI, tests and benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import grpc
from google.protobuf.json_format import MessageToDict

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:9000"


def make_request(
    prompt: str = "",
    *,
    messages: Optional[list[dict[str, str]]] = None,
    max_new_tokens: int = 0,
    force_tier: str = "",
    threshold: Optional[float] = None,
    include_logprobs: bool = False,
    token_alpha: Optional[float] = None,
) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        force_tier=force_tier,
        messages=[pb.Message(**m) for m in messages or []],
        include_logprobs=include_logprobs,
    )
    if threshold is not None:
        req.threshold = threshold
    if token_alpha is not None:
        req.token_alpha = token_alpha
    return req


class CascadeClient:
    """``token``: sent as ``authorization: Bearer <token>`` on every call (default: $CASCADE_TOKEN).
    ``tls_ca``: PEM file of the CA that signed the server's certificate; turns on TLS (for a TLS
    front such as cluster/tls/); ``tls=True`` uses the system's CAs."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: Optional[float] = 60.0,
        *,
        token: Optional[str] = None,
        tls_ca: Optional[str] = None,
        tls: bool = False,
    ):
        if tls_ca or tls:
            ca = Path(tls_ca).read_bytes() if tls_ca else None
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CascadeStub(self.channel)
        self.timeout = timeout
        token = token if token is not None else os.environ.get("CASCADE_TOKEN")
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def _md(self, metadata) -> list:
        return self.metadata + list(metadata or [])

    def generate(self, req: pb.GenerateRequest, metadata=None, timeout: Optional[float] = None) -> pb.GenerateResponse:
        return self.stub.Generate(req, timeout=timeout or self.timeout, metadata=self._md(metadata))

    def stream(self, req: pb.GenerateRequest, metadata=None) -> Iterator[pb.GenerateResponse]:
        return self.stub.GenerateStream(req, timeout=self.timeout, metadata=self._md(metadata))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CascadeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_dict(msg) -> dict:
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
