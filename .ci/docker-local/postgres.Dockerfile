# Enough of the postgres image for docker-compose.yml, from Debian's postgresql: PGDATA in
# /var/lib/postgresql/data, POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD on first start,
# the Unix socket in /var/run/postgresql, password (scram) over TCP.
FROM local/bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint /usr/local/bin/docker-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint"]
