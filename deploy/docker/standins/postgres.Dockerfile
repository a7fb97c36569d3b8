# A stand-in for the official postgres:15-bookworm where no registry is
# reachable: Debian bookworm's PostgreSQL 15 with the same interface the
# compose file uses (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD[_FILE],
# data in /var/lib/postgresql/data, pg_isready).
FROM shopfast-base:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
