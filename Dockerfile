# The image compose.yaml runs for the MLflow server, the Prefect server and the workers: this project and its
# dependencies (PostgreSQL drivers, Dask). Runs deploy from inside it, so deployment paths are /app:
#   docker compose run --rm prefect-worker-1 retrain deploy --config examples/
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e '.[postgres,dask]'
