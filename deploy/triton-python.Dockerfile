# Triton (NVIDIA's container) + edgemp's torch-free runtime, for repositories exported with
# `edgemp export triton CKPT --repo DIR --backend python` (their model.py imports edgemp).
#
#   pip wheel --no-deps -w dist .            # edgemp's wheel, from this repository
#   docker build -f deploy/triton-python.Dockerfile --build-arg TRITON=<YY.MM> -t <registry>/edgemp-triton:<tag> .
#
# The container's Python backend stub runs the image's own python3, so edgemp goes into it.
# numpy<2 (the `triton` extra) is what the stub of Triton 2.51 needed when run here; drop the
# pin only after `edgemp triton serve`-style tests pass on your release. Not built here (no
# container engine on the development machine): see docs/scaling-out.md.
ARG TRITON
FROM nvcr.io/nvidia/tritonserver:${TRITON}-py3
COPY dist/edgemp-*.whl /tmp/
RUN python3 -m pip install --no-cache-dir "$(ls /tmp/edgemp-*.whl)[triton]" && rm /tmp/edgemp-*.whl
