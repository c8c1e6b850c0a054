# mesh-log-analyzer image. Build from the repository root:
#   docker build -t mesh-log-analyzer:0.1.0 .
# Run (SQLite store on a volume; Kafka reachable from the container):
#   docker run -p 8080:8080 -e ANALYZER_KAFKA_BOOTSTRAP=kafka:9092 -v analyzer-data:/var/lib/mesh-analyzer \
#     mesh-log-analyzer:0.1.0
# The signature catalogue ships inside the package (analyzer/patterns); override it by mounting a directory
# and pointing ANALYZER_PATTERNS_DIR at it.

# Both stages must use the same base image: the venv's interpreter is a symlink into it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# All dependencies (hyperscan, numpy, orjson, psycopg[binary], aiokafka...) ship manylinux wheels for
# CPython 3.11 on x86_64 and aarch64, so no compiler is installed here.
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY analyzer/ ./analyzer/
COPY patterns/ ./patterns/
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -c "import aiokafka.record._crecords, hyperscan" \
    && /opt/venv/bin/mesh-analyzer rules check \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mesh-log-analyzer" \
      org.opencontainers.image.description="Recognise known Istio problems in istiod and proxy logs read from Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ANALYZER_HTTP_HOST=0.0.0.0 \
    ANALYZER_HTTP_PORT=8080 \
    ANALYZER_STORE_URL=sqlite:////var/lib/mesh-analyzer/analyzer.db \
    XDG_CACHE_HOME=/tmp/cache
# A fixed uid/gid (10001) so that Kubernetes runAsUser/fsGroup and volume ownership line up.
RUN groupadd --system --gid 10001 analyzer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin analyzer \
    && mkdir -p /var/lib/mesh-analyzer \
    && chown 10001:10001 /var/lib/mesh-analyzer
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
VOLUME ["/var/lib/mesh-analyzer"]
EXPOSE 8080
# python:*-slim has no curl/wget; urlopen raises (exit 1) on a refused connection or a non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ANALYZER_HTTP_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["mesh-analyzer"]
CMD ["serve"]
