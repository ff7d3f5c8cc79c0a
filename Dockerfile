# diffstream in a container: built with the toolchain image, run on slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin diffstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/diffstream /usr/local/bin/diffstream
COPY configs /app/configs
COPY dataflows/*.sql /app/dataflows/
COPY docker /app/docker
WORKDIR /app
ENTRYPOINT ["diffstream"]
