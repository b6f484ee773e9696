# The production image: the proxy built without the demo, on a distroless runtime (glibc, CA
# certificates, a non-root user, no shell). Build from the repository root:
#   docker build -t esi-proxy .
# Run with a config of your own mounted at /etc/esi-proxy/esi-proxy.toml:
#   docker run -p 8080:8080 -v $PWD/config:/etc/esi-proxy:ro esi-proxy

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p esi-proxy --no-default-features \
    && cp target/release/esi-proxy /esi-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /esi-proxy /usr/local/bin/esi-proxy
COPY config/esi-proxy.toml /etc/esi-proxy/esi-proxy.toml
EXPOSE 8080
# --listen overrides the file (and survives reloads): in a container the proxy listens on every
# interface; the file names the origin, fragment hosts, TTLs and limits.
ENTRYPOINT ["/usr/local/bin/esi-proxy"]
CMD ["serve", "--config", "/etc/esi-proxy/esi-proxy.toml", "--listen", "0.0.0.0:8080"]
