# coc-mail daemon image. Data (keys, Maildir outbox if used) lives in /srv/coc-mail/var.
FROM python:3.11-slim
RUN useradd --system --home /srv/coc-mail --create-home coc
WORKDIR /srv/coc-mail
COPY pyproject.toml README.md ./
COPY coc_mail ./coc_mail
RUN pip install --no-cache-dir . && rm -rf /root/.cache
COPY config ./config
RUN mkdir -p var && chown coc:coc var
USER coc
EXPOSE 2525
ENTRYPOINT ["coc-mail"]
CMD ["serve"]
