"""HTTP/2 (h2c) on the server's event loop, and gRPC over it: what ``--grpc-port`` serves.

:mod:`~edgemp.runtime.server.h2.frames` (framing), :mod:`~.headers` (HPACK decoding),
:mod:`~.connection` (one connection: its state and ends), assembled from :mod:`~.receiver`
(frame dispatch, request streams), :mod:`~.control` (control frames) and :mod:`~.writer`
(answers under flow control and back-pressure), with :mod:`~.stream` and :mod:`~.limits`;
:mod:`~.listener` (accepting, sweeping, draining), :mod:`~.grpc_handler` (gRPC semantics
over a stream).
"""
