# A Prometheus image from Debian's `prometheus` package, laid out like prom/prometheus (binary as
# the entrypoint, /prometheus for the data, runs as nobody, wget for the healthcheck), for
# machines without an image registry. Built by build.sh.
ARG DEBIAN_IMAGE=imgcls-base/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus

USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
