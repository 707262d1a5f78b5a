# The service image: the API and CPU-only workers (build + push, webhooks). No torch, no GPU.
#   docker build -f deploy/service.Dockerfile -t dreambuild-service .
# Built from the repository root; deploy/service.Dockerfile.dockerignore (not the root
# .dockerignore, which is for Cog build contexts) chooses what is sent.
FROM python:3.11-slim-bookworm AS wheel
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY builder builder
COPY dreambuild dreambuild
# The builder extra at exactly uv.lock's versions, and the project as a wheel.
RUN uv export --frozen --extra builder --no-emit-project --no-hashes -o /out/requirements.txt \
 && uv build --wheel --out-dir /out .

FROM python:3.11-slim-bookworm
COPY --from=wheel /out /tmp/dist
# pip writes the packages' bytecode as it installs (its default), so the API starts without compiling.
RUN pip install --no-cache-dir -r /tmp/dist/requirements.txt "$(ls /tmp/dist/dreambuild-*.whl)[builder]" && rm -rf /tmp/dist
RUN useradd --system --uid 10001 --home-dir /var/lib/dreambuild --create-home dreambuild
USER dreambuild
WORKDIR /var/lib/dreambuild
EXPOSE 8000
ENTRYPOINT ["dreambuild"]
CMD ["serve", "--config", "/etc/dreambuild/service.yaml", "--host", "0.0.0.0"]
