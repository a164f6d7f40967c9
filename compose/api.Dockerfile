# syntax=docker/dockerfile:1
# The API image: Flask under gunicorn, and the CPU-side commands (migrate, keys,
# dispatcher). Built from the repository alone:
#   docker build -f compose/api.Dockerfile -t janus-service-api .
# The package goes in WITHOUT the `models` extra: the API never imports torch, and
# this image stays a few hundred MB instead of several GB.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 janus \
    && useradd --system --uid 10001 --gid janus --home-dir /app --no-create-home janus \
    && mkdir -p /app /var/lib/janus \
    && chown janus:janus /var/lib/janus

WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml ./
COPY compose/requirements.py ./compose/
RUN python compose/requirements.py > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code. Editable, so that `migrations/` (found next to the package, see
# service/entry/migrate.py) stays where the code expects it.
COPY . .
RUN pip install --no-deps -e . \
    && chmod 0755 compose/entrypoint.sh \
    && python -c "import service.api, service.entry.cli"

USER janus
EXPOSE 8000
ENTRYPOINT ["/app/compose/entrypoint.sh"]
CMD ["janus-service", "api", "--host", "0.0.0.0", "--port", "8000"]
