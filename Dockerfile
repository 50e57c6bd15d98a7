# cropdoc inference server: CPU-only, slim, runs as a non-root user.
#
# The image holds the code, not a model: mount a bundle (a run's model/ folder) at /model.
#
#   docker build -t cropdoc .
#   cropdoc export runs/effb0/model --format onnx        # once, on the host (recommended)
#   docker run --rm -p 8000:8000 -v "$PWD/runs/effb0/model:/model:ro" cropdoc
#   # then open http://localhost:8000/ (web page) or http://localhost:8000/docs (API)
#
# Options after the image name replace the default CMD, e.g. `... cropdoc --backend torch`.
# With --backend onnx (default) and no ONNX export in the bundle, the server exports one
# at start-up, which needs the mount to be writable (drop ":ro").
#
# torch and torchvision come from PyTorch's CPU-only wheel index by default (a few hundred
# MB instead of the CUDA build's GBs); for a CUDA image pass another index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.12-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# torch first from the chosen index, so installing cropdoc (lower bounds) keeps it.
RUN pip install --index-url "$TORCH_INDEX" "torch>=2.14" "torchvision>=0.29" \
    && pip install ".[serve]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin cropdoc

USER cropdoc
# Matplotlib (imported by the package) wants a writable config dir.
ENV MPLCONFIGDIR=/tmp/matplotlib
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["cropdoc", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--backend", "onnx"]
