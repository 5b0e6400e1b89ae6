# One image for every process of the system (controller, positions, aumsim, fillsim); the
# process is chosen by the command (see compose.yaml). Runtime dependencies only: the
# project and what pyproject.toml declares, in a virtualenv built in a first stage, so no
# build tool, pip cache or source tree is left in the image.
#
#   docker build -t fillalloc .                                   # python:3.12-slim base
#   docker build -t fillalloc --build-arg BASE=fillalloc-base:bookworm .   # local base
#
# The local base (no public registry reachable) is made by .ci/docker-base from Debian's
# packages; any base with python3 (3.11 or newer) and its venv module will do.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/fillalloc
# The dependencies pyproject.toml declares (and its build backend), in a layer of their
# own: rebuilt only when pyproject.toml changes, not on every change of the code.
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); print(*p["project"]["dependencies"], *p["build-system"]["requires"], sep="\n")' > /src/requirements.txt \
    && /opt/fillalloc/bin/pip install -r /src/requirements.txt
COPY README.md launcher.py /src/
COPY common /src/common
COPY controller /src/controller
COPY fillsim /src/fillsim
COPY aumsim /src/aumsim
COPY positions /src/positions
# The project itself; then the build backend and pip leave the venv: not needed to run.
RUN /opt/fillalloc/bin/pip install --no-deps --no-build-isolation /src \
    && /opt/fillalloc/bin/pip uninstall --yes setuptools pip

FROM ${BASE}
# A fixed, unprivileged user: files it writes on volumes keep the same owner across images.
ARG UID=10001
RUN groupadd --system --gid "${UID}" fillalloc \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /var/lib/fillalloc \
        --create-home --shell /usr/sbin/nologin fillalloc \
    && mkdir -p /var/lib/fillalloc/data \
    && chown fillalloc:fillalloc /var/lib/fillalloc/data
COPY --from=build /opt/fillalloc /opt/fillalloc
ENV PATH=/opt/fillalloc/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Relative paths in the configuration (the journal, the positions record) land in data/,
# the directory the journal's named volume is mounted on.
WORKDIR /var/lib/fillalloc
USER fillalloc
# Healthy: the controller once both its sockets are bound, the position server once its
# web view has a snapshot; the simulators have nothing to check (common/health.py tells
# which process the container runs from PID 1's command line).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-m", "common.health"]
CMD ["controller", "--help"]
