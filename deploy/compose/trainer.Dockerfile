# The demo trainer of compose.yaml and the image of examples/k8s/training-job.yaml:
# Python 3.11, PyTorch (CPU build), nnwatch and scikit-learn (its digits data set ships inside the package).
# Build from the repository root: docker build -f deploy/compose/trainer.Dockerfile -t nnwatch-trainer .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1

# The CPU wheel first, so that installing nnwatch does not pull a CUDA build of torch.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/nnwatch
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN pip install . "scikit-learn>=1.3"

USER 1000:1000
EXPOSE 9945
CMD ["nnwatch", "demo", "--port", "9945", "--hold", "86400"]
