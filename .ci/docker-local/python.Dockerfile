# python:3.11-slim's shape from Debian's packages: Python 3.11 with pip, first on PATH.
# Certificates in ca/ (the build script copies this host's local CAs there, for a proxy
# that re-signs TLS) are trusted by apt, pip and Python.
FROM local/bookworm
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && update-ca-certificates \
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN pip install --no-cache-dir --upgrade pip
CMD ["python3"]
