"""``splitasr.v1.Adapters``: converts messages and delegates to the engine's adapter store."""

from __future__ import annotations

import asyncio

import grpc

from splitasr_device._proto import adapters_pb2 as pb
from splitasr_device._proto import adapters_pb2_grpc

from ...engine.engine import Engine
from ...errors import InvalidAdapter, InvalidInput, NotFound, TooLarge
from ...storage import BaseStore, check_name, check_sha256
from .convert import adapter_info
from .interceptors import current_tenant


class AdaptersServicer(adapters_pb2_grpc.AdaptersServicer):
    def __init__(self, engine: Engine, store: BaseStore):
        self.engine = engine  # validates and stores uploads
        self.store = store

    async def _receive(self, requests) -> tuple[pb.UploadHeader, bytes]:
        """The header and the file's bytes; checks order, announced size and the size limit."""
        header: pb.UploadHeader | None = None
        parts: list[bytes] = []
        received = 0
        async for request in requests:
            which = request.WhichOneof("payload")
            if header is None:
                if which != "header":
                    raise InvalidInput("the first Upload message must be the header (name, sha256, size, kind)")
                header = request.header
                check_name(header.name)
                check_sha256(header.sha256)
                if header.size == 0:
                    raise InvalidAdapter("the header announces an empty file (size 0)")
                limit = self.engine.limits.max_file_bytes
                if header.size > limit:
                    raise TooLarge(f"adapter of {header.size} bytes exceeds the limit of {limit} bytes")
            elif which != "chunk":
                raise InvalidInput("only the first Upload message may be a header; send chunks after it")
            else:
                received += len(request.chunk)
                if received > header.size:
                    raise InvalidInput(f"more bytes than the {header.size} the header announced")
                parts.append(request.chunk)
        if header is None:
            raise InvalidInput("empty Upload: send a header, then the file in chunks")
        if received != header.size:
            raise InvalidInput(f"upload incomplete: {received} of the announced {header.size} bytes arrived")
        return header, b"".join(parts)

    async def Upload(self, request_iterator, context: grpc.aio.ServicerContext) -> pb.AdapterInfo:
        tenant = current_tenant()
        header, data = await self._receive(request_iterator)  # nothing is stored before this returns
        if header.kind:
            kind = await asyncio.to_thread(self.engine.validate_kind, data)
            if kind != header.kind:
                raise InvalidAdapter(f"the header says kind {header.kind!r} but the file is a {kind!r} adapter")
        record = await asyncio.to_thread(self.engine.put_adapter, tenant, header.name, data, header.sha256)
        return adapter_info(record)

    async def Stat(self, request: pb.StatRequest, context: grpc.aio.ServicerContext) -> pb.AdapterInfo:
        tenant = current_tenant()
        which = request.WhichOneof("ref")
        if which == "sha256":
            record = self.store.find_by_hash(tenant, request.sha256)
            if record is None:
                raise NotFound(f"no adapter with sha256 {request.sha256.lower()}; upload it first")
            return adapter_info(record)
        if which == "name":
            return adapter_info(self.store.get(tenant, request.name))
        raise InvalidInput("Stat needs a sha256 or a name")

    async def List(self, request: pb.ListAdaptersRequest, context: grpc.aio.ServicerContext):
        return pb.ListAdaptersResponse(adapters=[adapter_info(r) for r in self.store.list(current_tenant())])

    async def Delete(self, request: pb.DeleteAdapterRequest, context: grpc.aio.ServicerContext) -> pb.AdapterInfo:
        record = await asyncio.to_thread(self.store.delete, current_tenant(), request.name)
        return adapter_info(record)
