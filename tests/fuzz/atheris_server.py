"""Coverage-guided fuzzing of ``edgemp serve``'s request decoders with atheris (run by hand).

The hypothesis fuzzer in ``tests/server/test_server_fuzz.py`` runs in CI with a fixed budget;
this harness runs as long as you let it and steers by coverage. Like the CI fuzzer it
goes through the public surface only: a real server (``create_app`` + ``serve_app``) on
127.0.0.1 in a thread of this process, so atheris sees the server's coverage, and real
HTTP requests to it.

Each input is ``[route byte][header-length bytes (2)][body...]``: the route byte picks
the model and the endpoint (V2 JSON, V2 binary with ``Inference-Header-Content-Length``,
/v1, gzip-encoded V2); the body is sent as is. A 5xx, a dropped connection or a dead
server is a crash, which atheris reports with the input that caused it.

    pip install atheris            # or: pip install -e '.[fuzz]'
    python tests/fuzz/atheris_server.py tests/fuzz/corpus -max_total_time=600
    python tests/fuzz/atheris_server.py -runs=0 tests/fuzz/corpus   # just replay the corpus

New interesting inputs are written into the corpus directory; commit the small ones.
``make_seeds()`` rebuilds the seed files (``python tests/fuzz/atheris_server.py --seeds``).
"""
from __future__ import annotations

import gzip
import json
import sys
import tempfile
from http.client import HTTPConnection
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ helpers: hardening_utils, runtime_fixtures

ROUTES = [  # (path, kind)
    ("/v2/models/gnn/infer", "json"), ("/v2/models/gnn_edge/infer", "json"), ("/v2/models/gnn_dense/infer", "json"),
    ("/v2/models/gnn/infer", "binary"), ("/v2/models/gnn_edge/infer", "binary"),
    ("/v1/models/gnn/predict", "json"), ("/v1/models/gnn_edge/predict", "json"), ("/v1/models/gnn_dense/predict", "json"),
    ("/v2/models/gnn/infer", "gzip"),
]


def encode_input(route: int, body: bytes, header_length: int = 0) -> bytes:
    return bytes([route]) + header_length.to_bytes(2, "little") + body


def make_seeds(corpus: Path) -> None:
    """Valid requests for every route (the fuzzer mutates from these)."""
    import numpy as np

    from runtime_fixtures import random_graphs
    from server_utils import batch_tensors, v2_binary_body, v2_json_body

    corpus.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (path, kind) in enumerate(ROUTES):
        ef = 3 if "edge" in path else 0
        graphs = random_graphs(rng, 2, max_nodes=4, edge_features=ef)
        if path.startswith("/v1"):
            body = json.dumps({"graphs": [{"x": g.x.round(2).tolist(), "edge_index": g.edge_index.tolist(),
                                           **({"edge_attr": g.edge_attr.round(2).tolist()} if ef else {})}
                                          for g in graphs]}).encode()
            data = encode_input(i, body)
        elif kind == "binary":
            body, n = v2_binary_body(batch_tensors(graphs, ef))
            data = encode_input(i, body, n)
        else:
            data = encode_input(i, v2_json_body(batch_tensors(graphs, ef)))
        (corpus / f"seed-{i:02d}-{kind}").write_bytes(data)


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        from edgemp.runtime.server import ServerConfig
        from hardening_utils import build_repo, start_thread_server

    repo = build_repo(Path(tempfile.mkdtemp(prefix="edgemp-atheris-")))
    server = start_thread_server(repo, ServerConfig(port=0, access_log=False, max_body_bytes=1 << 20))
    conn = [HTTPConnection("127.0.0.1", server.port, timeout=30)]

    def one_input(data: bytes) -> None:
        if len(data) < 3:
            return
        path, kind = ROUTES[data[0] % len(ROUTES)]
        header_length = int.from_bytes(data[1:3], "little")
        body = data[3:]
        headers = {}
        if kind == "binary":
            headers["Inference-Header-Content-Length"] = str(min(header_length, len(body)) or len(body))
        elif kind == "gzip":
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        try:
            conn[0].request("POST", path, body=body, headers=headers)
            response = conn[0].getresponse()
        except (ConnectionError, OSError):  # a closed keep-alive: reconnect and retry once
            conn[0].close()
            conn[0] = HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn[0].request("POST", path, body=body, headers=headers)
            response = conn[0].getresponse()
        payload = response.read()
        if response.status >= 500:
            raise RuntimeError(f"{path}: HTTP {response.status}: {payload[:300]!r}")
        if response.status != 200 and "error" not in json.loads(payload):
            raise RuntimeError(f"{path}: HTTP {response.status} without a JSON error")
        if response.getheader("Connection", "").lower() == "close":
            conn[0].close()
            conn[0] = HTTPConnection("127.0.0.1", server.port, timeout=30)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    if "--seeds" in sys.argv:
        make_seeds(HERE / "corpus")
    else:
        main()
