# The Dagster image: webserver (default command), daemon, run worker and CLI, one code location.
#   docker build -t dagster .
#   docker run dagster                                   # webserver on :3000
#   docker run dagster dagster-daemon run -w /opt/dagster/dagster_home/workspace.yaml
#   docker run dagster batchinfer db upgrade             # the CLI job: any command, as args
#   docker run dagster dagster instance migrate
# It never runs the model (that is the model server's image, model-server/Dockerfile): no torch.
# tools/check-images builds it with buildah and starts it in CI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    BATCHINFER_HOME=/tmp/batchinfer

# A virtual environment, not the base's interpreter: the same steps work on any base with
# python3 and its venv module.
RUN python3 -m venv /opt/venv

WORKDIR /opt/dagster/app
COPY protocol ./protocol
COPY pyproject.toml README.md ./
COPY batchinfer_dagster ./batchinfer_dagster
# uid 10001: above the range base images give their own users (Ubuntu's `ubuntu` is 1000).
RUN pip install ./protocol . \
    && useradd --system --uid 10001 --home-dir /opt/dagster dagster \
    && mkdir -p "${DAGSTER_HOME}/storage" \
    && chown -R dagster /opt/dagster

COPY deploy/dagster.yaml workspace.yaml ${DAGSTER_HOME}/

USER dagster
EXPOSE 3000

# No ENTRYPOINT: Cloud Run's `args` (the CLI job's, the run launcher's) are the whole command.
CMD ["dagster-webserver", "--host", "0.0.0.0", "--port", "3000", \
     "--workspace", "/opt/dagster/dagster_home/workspace.yaml"]
