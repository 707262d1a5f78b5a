# A GPU worker: `dreambuild worker` with the trainer's ML stack and this checkout's trainer, which
# the local runner starts as a Cog server on the worker's own GPU.
#   docker build -f deploy/worker-gpu.Dockerfile -t dreambuild-worker-gpu .
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /opt/dreambuild
COPY pyproject.toml uv.lock README.md ./
# The trainer and builder extras at uv.lock's versions (PyPI's torch wheels carry CUDA), with
# bytecode: uv writes none by default, and every trainer start would compile torch and diffusers.
ENV UV_COMPILE_BYTECODE=1
RUN uv sync --frozen --no-install-project --extra trainer --extra builder --python /usr/local/bin/python3.11
COPY builder builder
COPY dreambuild dreambuild
COPY trainer trainer
COPY cog.yaml cog.yaml
RUN uv sync --frozen --extra trainer --extra builder --python /usr/local/bin/python3.11
RUN useradd --system --uid 10001 --home-dir /var/lib/dreambuild --create-home dreambuild
USER dreambuild
ENV PATH=/opt/dreambuild/.venv/bin:$PATH
ENTRYPOINT ["dreambuild"]
CMD ["worker", "--config", "/etc/dreambuild/service.yaml", "--data-dir", "/var/lib/dreambuild"]
