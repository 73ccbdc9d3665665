# syntax=docker/dockerfile:1
#
# One image for the whole platform: every service binary is in
# /usr/local/bin and the command picks one (`todo-api`, `todo-api migrate`,
# `todo-recurring`, `todo-notifier`, `todo-audit`, `todo-realtime`).
#
#   docker build -t todo-platform .
#   docker run --rm -e JWT_SECRET=... todo-platform todo-audit
#
# Dependencies are compiled in their own layer (cargo-chef): a change to the
# project's code rebuilds only the workspace crates, not rdkafka & co.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- toolchain + cargo-chef --------------------------------------------------
FROM ${RUST_IMAGE} AS chef
# rdkafka builds librdkafka from source with its configure script and make
# (the `cmake-build` feature is off), against OpenSSL and zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked
WORKDIR /src

# ---- the recipe: manifests and lock file only ---------------------------------
FROM chef AS planner
COPY . .
# The image needs the services only: the benchmarks crate (and whatever it
# depends on) leaves the workspace (.dockerignore drops benches/ too). Cargo
# then prunes its packages from Cargo.lock and keeps every other version as
# locked.
RUN sed -i -E '/^\s*"benches",?\s*$/d' Cargo.toml \
 && cargo chef prepare --recipe-path recipe.json

# ---- build -------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Cached until Cargo.toml/Cargo.lock change. It builds the same package set
# as the final build below (the whole trimmed workspace), so feature
# unification is identical and nothing is compiled twice.
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN sed -i -E '/^\s*"benches",?\s*$/d' Cargo.toml \
 && cargo build --release --workspace --bins \
 && mkdir -p /out \
 && for bin in todo-api todo-recurring todo-notifier todo-audit todo-realtime; do \
      install -m 0755 "target/release/$bin" "/out/$bin"; \
    done

# ---- runtime -----------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: TLS to managed Kafka (SASL_SSL) and PostgreSQL is verified
# against the system's CA store. libssl3: librdkafka's TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 todo \
 && useradd --system --uid 10001 --gid todo --home-dir /nonexistent --shell /usr/sbin/nologin todo
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV RUST_LOG=info
# todo-api 8080, todo-recurring 8081, todo-notifier 8082, todo-audit 8083,
# todo-realtime 8084 (each also honours PORT).
EXPOSE 8080 8081 8082 8083 8084
STOPSIGNAL SIGTERM
CMD ["todo-api"]
