# The captioning service with the shipped default weights, on CPU.
#
#   docker build -t captioner .
#   docker run --rm -p 8000:8000 captioner          # then open http://127.0.0.1:8000/
#
# Build arguments:
#   TORCH_INDEX_URL  a pip index to take torch/torchvision from first, e.g. PyTorch's CPU-only
#                    wheel index, which makes the image about 2 GB smaller than the default
#                    wheels with CUDA libraries (leave empty to use the normal index).
# Threads: the model uses CAPTIONER_TORCH_THREADS (and OMP_NUM_THREADS) threads; give each
# container as many as the CPUs it is allowed (docker-compose.yml sets both from one variable).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin captioner
WORKDIR /app

# torch first (largest layer, changes least often)
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4" "torchvision>=0.19"; \
    fi

COPY pyproject.toml README.md ./
COPY captioner ./captioner
COPY service ./service
COPY training ./training
COPY weights ./weights
RUN pip install . && rm -rf /app/build

# Refuse to build an image whose default weights are missing or do not load. Loading also
# exports the encoder for the fast CPU path (ONNX Runtime) into CAPTIONER_CACHE_DIR, so
# containers start without that export (and the read-only container needs no cache writes).
ENV CAPTIONER_CACHE_DIR=/app/cache
RUN mkdir -p /app/cache && captioner info > /dev/null && chmod -R a+rX /app/cache

USER captioner
ENV CAPTIONER_HOST=0.0.0.0 \
    CAPTIONER_PORT=8000 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    CAPTIONER_TORCH_THREADS=2 \
    OMP_NUM_THREADS=2
EXPOSE 8000

# Ready = model loaded and not draining (503 while shutting down).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]

# SIGTERM drains: /readyz turns 503, in-flight requests finish, then the process exits 0.
STOPSIGNAL SIGTERM
CMD ["captioner", "serve"]
