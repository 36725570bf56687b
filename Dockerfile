# The captioning service on CPU: the lean runtime (numpy, Pillow, ONNX Runtime, FastAPI; no
# PyTorch) with the shipped weights and their exported ONNX graphs. Nothing is exported or
# downloaded when a container starts, and nothing is written outside /tmp.
#
#   docker build -t captioner .                        the service image (the default target)
#   docker run --rm -p 8000:8000 captioner             then open http://127.0.0.1:8000/
#   docker build --target train -t captioner-train .   optional: the same package with PyTorch
#                                                      (training, fine-tuning, export; GBs)
#
# Threads: give each container as many as the CPUs it may use (docker-compose.yml sets the
# thread settings and the CPU limit from one variable, CAPTIONER_CPUS).
# `make image-check` builds and runs this file with podman (scripts/image-check.sh).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# The unprivileged user that runs the service; its home is the /tmp tmpfs, the only place a
# container may write.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin captioner


# The package, the shipped weights (with their graphs) and the runtime's dependencies, installed
# under /install; the sources stay in this stage. The runtime must not pull in PyTorch: a
# dependency that would makes pip fail here, at once. In the same step, what the service never
# reads goes: the dependencies' own test suites (numpy's are 17 MB), and the second copy of
# the ImageNet label graph, which both shipped models share byte for byte (a link instead;
# loading still checks its digest).
FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY captioner ./captioner
COPY service ./service
COPY training ./training
COPY weights ./weights
RUN printf 'torch<0\ntorchvision<0\n' > /tmp/no-torch.txt \
    && pip install --prefix=/install --constraint /tmp/no-torch.txt . \
    && rm -rf /tmp/no-torch.txt build \
    && site=/install/lib/python3.11/site-packages \
    && find "$site" -mindepth 2 -type d -name tests -not -path "$site/captioner/*" -prune \
        -exec rm -rf {} + \
    && graphs="$site/captioner/weights" \
    && if cmp -s "$graphs/default/graphs/labels.onnx" "$graphs/pooled/graphs/labels.onnx"; then \
        ln -sf ../../default/graphs/labels.onnx "$graphs/pooled/graphs/labels.onnx"; fi


# Optional: training, fine-tuning and `captioner export`. TORCH_INDEX_URL, e.g. PyTorch's
# CPU-only index (https://download.pytorch.org/whl/cpu), takes torch from there first, which
# makes this image GBs smaller than PyPI's wheels with their CUDA libraries.
FROM build AS train
ARG TORCH_INDEX_URL=
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4" "torchvision>=0.19"; \
    fi \
    && pip install "/src[train]"
USER 10001:10001
WORKDIR /tmp
CMD ["captioner", "--help"]


# The service (the last stage, so the default target): the base plus what `build` installed.
FROM base AS service
COPY --from=build /install /usr/local
# Refuse to build an image whose default weights are missing, lack their exported graphs or
# do not load without PyTorch (`captioner info` then says which file and what to run).
RUN python -c "import importlib.util as u, sys; sys.exit('torch is installed' if u.find_spec('torch') else 0)" \
    && captioner info

USER 10001:10001
WORKDIR /tmp
ENV CAPTIONER_HOST=0.0.0.0 \
    CAPTIONER_PORT=8000 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    CAPTIONER_THREADS=2 \
    OMP_NUM_THREADS=2
EXPOSE 8000

# Ready = model loaded and not draining (503 while shutting down); follows CAPTIONER_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c 'import os, sys, urllib.request as u; sys.exit(u.urlopen("http://127.0.0.1:%s/readyz" % os.environ.get("CAPTIONER_PORT", "8000"), timeout=2).status != 200)'

# SIGTERM drains: /readyz turns 503, in-flight requests finish, then the process exits 0.
STOPSIGNAL SIGTERM
CMD ["captioner", "serve"]
