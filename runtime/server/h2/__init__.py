"""HTTP/2 (h2c) on the server's event loop, and gRPC over it: what ``--grpc-port`` serves.

:mod:`~edgemp.runtime.server.h2.frames` (framing), :mod:`~.headers` (HPACK decoding),
:mod:`~.connection` (one connection: streams, flow control, limits), :mod:`~.listener`
(accepting, sweeping, draining), :mod:`~.grpc_handler` (gRPC semantics over a stream).
"""
