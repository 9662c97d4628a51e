# The Dagster image: webserver (default command), daemon and `batchinfer` CLI, one code location.
#   docker build -t dagster .
#   docker run dagster                                   # webserver on :3000
#   docker run dagster dagster-daemon run -w /opt/dagster/dagster_home/workspace.yaml
#   docker run dagster batchinfer db upgrade
# It never runs the model (that is the model server's image, model-server/Dockerfile): no torch.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    BATCHINFER_HOME=/tmp/batchinfer

WORKDIR /opt/dagster/app
COPY protocol ./protocol
COPY pyproject.toml README.md ./
COPY batchinfer_dagster ./batchinfer_dagster
RUN pip install ./protocol . \
    && useradd --system --uid 10001 --home-dir /opt/dagster dagster \
    && mkdir -p "${DAGSTER_HOME}" \
    && chown -R dagster /opt/dagster

COPY deploy/dagster.yaml workspace.yaml ${DAGSTER_HOME}/

USER dagster
EXPOSE 3000

CMD ["dagster-webserver", "--host", "0.0.0.0", "--port", "3000", \
     "--workspace", "/opt/dagster/dagster_home/workspace.yaml"]
