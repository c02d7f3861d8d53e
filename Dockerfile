FROM python:3.12-slim AS build
WORKDIR /src
COPY . .
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH
COPY --from=build /venv /venv
RUN useradd --uid 10001 --no-create-home pvebalance
USER 10001
ENTRYPOINT ["pvebalance"]
