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
# torch is installed as pyproject pins it. For a much smaller image, build with the
# CPU-only wheel index:  docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
FROM python:3.12-slim

ARG TORCH_INDEX=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[serve]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin cropdoc

USER cropdoc
# Matplotlib (imported by the package) wants a writable config dir.
ENV MPLCONFIGDIR=/tmp/matplotlib
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["cropdoc", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--backend", "onnx"]
