# One image for the API and the workers. The API never imports torch; workers use the
# CUDA build of torch that PyPI serves for Linux, and the NVIDIA runtime supplies the driver.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEAF_DATA_DIR=/data \
    HF_HOME=/data/huggingface

# bubblewrap isolates the model-written code that evaluate jobs run (leaf_engine/sandbox.py).
# Unprivileged: the container needs user namespaces, see docs/reliability.md.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/leaf
COPY pyproject.toml README.md ./
COPY leaf_engine ./leaf_engine
COPY leaf_cli ./leaf_cli
COPY leaf_service ./leaf_service
COPY app ./app
COPY workers ./workers
COPY frontend ./frontend
# Editable, so the app finds frontend/ and the demo pair beside its sources.
RUN pip install -e ".[service,eval]"

RUN useradd --create-home --uid 1000 leaf && mkdir -p /data && chown leaf /data
USER leaf
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `leaf serve` refuses a public address without LEAF_API_TOKEN; compose runs its own commands.
CMD ["leaf", "serve", "--host", "0.0.0.0", "--port", "8000"]
