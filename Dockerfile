# Build stage: compile the release binary. The binary embeds migrations/, client/ and
# docs/openapi.json, so they are part of the build context (tests/api/compose.rs checks).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# Workspace members: cargo reads their manifests even when building the gateway alone.
COPY load ./load
COPY tests ./tests
COPY clients/rust ./clients/rust
COPY migrations ./migrations
COPY client/index.html client/ticketgate.js client/ticketgate-worker.js ./client/
COPY client/console ./client/console
COPY docs/openapi.json ./docs/
RUN cargo build --release --locked --bin ticketgate

# Runtime stage: a small image with only the binary, running as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ticketgate
COPY --from=build /src/target/release/ticketgate /usr/local/bin/ticketgate
USER ticketgate
ENV BIND_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/ticketgate"]
