# syntax=docker/dockerfile:1
# The fullpass worker image: the runtime lock (requirements/lock.txt) in a
# virtualenv, run as an unprivileged user.
#
#   docker build -t fullpass .
#   docker run --rm -e DATABASE_URL=... fullpass migrate   # once per release
#   docker run -d   -e DATABASE_URL=... fullpass           # each worker
#
# Both stages use the same base image, so the virtualenv built in the first one
# finds the same interpreter at the same path in the second.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
RUN python -m venv /opt/fullpass
ENV PATH=/opt/fullpass/bin:$PATH

# Dependencies first: this layer is rebuilt only when a lock changes. Every
# package is a wheel whose hash is in the lock; nothing is compiled.
COPY requirements/build-lock.txt requirements/lock.txt requirements/
RUN pip install --require-hashes -r requirements/build-lock.txt \
 && pip install --require-hashes --only-binary=:all: -r requirements/lock.txt

# Then the project itself, without dependencies (they are all locked above).
COPY pyproject.toml README.md ./
COPY worker worker
COPY jobs jobs
COPY migrations migrations
RUN pip install --no-deps --no-build-isolation . \
 && pip uninstall -y -q setuptools pip

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

# FULLPASS_HOME holds scratch files; /data/storage is the local storage root
# (mount one volume there for every worker, or use Supabase Storage).
RUN groupadd --system --gid 10001 fullpass \
 && useradd --system --uid 10001 --gid fullpass --no-log-init \
        --home-dir /data/home --shell /usr/sbin/nologin fullpass \
 && install -d -o fullpass -g fullpass /data/home /data/storage

COPY --from=build /opt/fullpass /opt/fullpass

ENV PATH=/opt/fullpass/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FULLPASS_HOME=/data/home \
    FULLPASS_LOG_FORMAT=json

USER fullpass
WORKDIR /data/home
VOLUME ["/data/home"]

# `fullpass health` exits non-zero when the database is unreachable, when no
# worker has sent a heartbeat lately, or when an import is stuck. It gives up
# on the database after 10 s.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["fullpass", "health"]

# The worker finishes its running jobs on SIGTERM for min(30 s,
# FULLPASS_STALLED_SECONDS / 2), then aborts the rest (they are retried at
# once): give it a stop timeout of at least 45 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fullpass"]
CMD ["worker"]
