# One image with the four programs: caddy (with the dtable modules, built by
# xcaddy.sh), monitor, registrar and stand-in-server (a stand-in
# dtable-server for the example cluster). docker-compose.yml runs the example
# cluster from it, docker-compose.proxy-node.yml the proxy node alone.
FROM golang:1.26 AS build
# Static binaries: they must not depend on the build image's C library,
# which may be newer than the final image's.
ENV CGO_ENABLED=0
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN ./xcaddy.sh \
 && go build -o /out/monitor ./monitor \
 && go build -o /out/registrar ./registrar \
 && go build -o /out/stand-in-server ./tools/stand-in-server \
 && cp ./caddy /out/caddy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY Caddyfile.example /etc/caddy/Caddyfile
EXPOSE 5550 5555
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile"]
