# A Python base image for the project's Dockerfile, from Debian's own packages: what
# `python:3.11-slim` gives the Dockerfile (python, venv, useradd/groupadd, CA certificates), for
# machines that reach a Debian mirror and PyPI but no image registry. Built by build.sh.
ARG DEBIAN_IMAGE=imgcls-base/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 passwd ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The host's locally added CA certificates (an egress proxy's, say): without them pip inside a
# build finds no versions. The folder may hold none.
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
