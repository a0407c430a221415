# One image for every process of a deployment: the API (gunicorn), the worker and the beat
# (celery) and the one-shot migration (alembic); docker-compose.yml picks the command.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first, from pyproject.toml alone (empty packages stand in for the code),
# so that editing the code does not reinstall them; at the versions of constraints.txt.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir nn service worker \
 && touch nn/__init__.py service/__init__.py worker/__init__.py \
 && pip install -c constraints.txt . \
 && pip uninstall -y backprop-service \
 && rm -rf nn service worker build ./*.egg-info

# The source stays in /app and is installed in place: service.db finds alembic.ini and
# migrations/ beside the service package, and `alembic upgrade head` runs from here.
COPY . .
RUN pip install --no-deps -e . \
 && python -c "from nn.engines import kernel; kernel.warm()" \
 && useradd --system --uid 10001 --home-dir /app --no-create-home backprop \
 && mkdir -p /app/var && chown backprop /app/var

USER backprop
EXPOSE 8000
# The API by default; the same command as docker-compose.yml's api service.
CMD ["gunicorn", "--config", "python:service.gunicorn_conf", "--bind", "0.0.0.0:8000", "--workers", "2", "--worker-class", "gevent", "--worker-connections", "1000", "--no-control-socket", "service.wsgi:app"]
