# coc-mail daemon image. Its data (storage key, DKIM key, pid file, a Maildir outbox if used)
# lives in the volume /srv/coc-mail/var; the configuration is /srv/coc-mail/config/docker.toml
# (mount ./config over /srv/coc-mail/config so that `coc-mail reload` sees your edits).
# BASE_IMAGE: any image with Python 3.11+ and pip first on PATH (.ci/docker-local builds one
# from Debian's packages where Docker Hub is out of reach).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# A fixed uid, so that files mounted from the host (the TLS key) can be made readable to it.
RUN groupadd --system --gid 2525 coc \
    && useradd --system --uid 2525 --gid coc --home /srv/coc-mail --create-home coc
WORKDIR /srv/coc-mail
COPY pyproject.toml README.md ./
COPY coc_mail ./coc_mail
RUN pip install --no-cache-dir . && rm -rf /root/.cache build coc_mail.egg-info
COPY config ./config
RUN mkdir -p var && chown coc:coc var
ENV COC_MAIL_CONFIG=/srv/coc-mail/config/docker.toml \
    PYTHONUNBUFFERED=1
VOLUME /srv/coc-mail/var
USER coc
EXPOSE 2525
# Healthy: the SMTP listener greets with 220 and the database answers (`coc-mail healthcheck
# --help`). The start period covers start-up waiting for the database (storage.connect_timeout_seconds).
HEALTHCHECK --interval=30s --timeout=15s --start-period=90s --retries=3 \
    CMD ["coc-mail", "healthcheck", "--timeout", "5"]
ENTRYPOINT ["coc-mail"]
CMD ["serve"]
