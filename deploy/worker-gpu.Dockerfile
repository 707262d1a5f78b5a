# A GPU worker: `dreambuild worker` with everything its roles import (train: the trainer's ML stack
# and bitsandbytes, the `gpu` extra;
# predict: the templates' packages, compel and controlnet-aux among them; build and webhooks: the
# builder), this checkout's trainer and templates, and the weights they need, fetched at build time:
# SD 1.5 as ./base-model (the local trainer's default base, its digest beside it) and the safety
# checker the templates bake. It also writes the templates into the registry (compose's
# `templates` service: `dreambuild templates add NAME --to registry:5000/dreambuild/NAME`).
#   docker build -f deploy/worker-gpu.Dockerfile -t dreambuild-worker-gpu .
#   docker build -f deploy/worker-gpu.Dockerfile --build-arg FETCH_WEIGHTS=0 ...   # bring your own: mount them
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /opt/dreambuild
COPY pyproject.toml uv.lock README.md ./
# The extras at uv.lock's versions (PyPI's torch wheels carry CUDA), with bytecode: uv writes none
# by default, and every trainer or model start would compile torch and diffusers.
ENV UV_COMPILE_BYTECODE=1
RUN uv sync --frozen --no-install-project --extra trainer --extra gpu --extra templates --extra builder --python /usr/local/bin/python3.11
ENV PATH=/opt/dreambuild/.venv/bin:$PATH
ARG FETCH_WEIGHTS=1
RUN if [ "$FETCH_WEIGHTS" = 1 ]; then \
      HF_HUB_OFFLINE=0 hf download CompVis/stable-diffusion-safety-checker --include "*.json" --include model.safetensors --local-dir safety-checker; \
    fi
COPY builder builder
COPY dreambuild dreambuild
COPY trainer trainer
COPY templates templates
COPY cog.yaml cog.yaml
RUN uv sync --frozen --extra trainer --extra gpu --extra templates --extra builder --python /usr/local/bin/python3.11
RUN if [ "$FETCH_WEIGHTS" = 1 ]; then HF_HUB_OFFLINE=0 python -m trainer.fetch_base_model --dest base-model \
    && HF_HUB_OFFLINE=0 python -m trainer.fetch_eval_models --dest eval-models; fi
RUN useradd --system --uid 10001 --home-dir /var/lib/dreambuild --create-home dreambuild
USER dreambuild
ENV HF_HUB_OFFLINE=1
ENTRYPOINT ["dreambuild"]
CMD ["worker", "--config", "/etc/dreambuild/service.yaml", "--data-dir", "/var/lib/dreambuild"]
