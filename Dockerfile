# Tollgate: a slim runtime image.
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 -v $PWD/policies:/etc/tollgate:ro tollgate
# Build stage: the Swift toolchain on Debian 12 with the three C libraries' headers.
FROM swift:6.1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev libhiredis-dev libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib \
 && install -D .build/release/tollgate /out/tollgate

# Runtime stage: only the shared libraries the binary links.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libhiredis0.14 libnghttp2-14 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tollgate --create-home tollgate
COPY --from=build /out/tollgate /usr/local/bin/tollgate
COPY policies /etc/tollgate
# Minted keys (hashes only) live here unless a Redis store is configured.
ENV TOLLGATE_STATE_DIR=/var/lib/tollgate/state
USER tollgate
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--policies", "/etc/tollgate"]
