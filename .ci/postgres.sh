#!/usr/bin/env bash
# Install PostgreSQL from Debian's packages if needed and start a throwaway server on
# 127.0.0.1, then print the SQLAlchemy URL of its database `medbench` (user and password
# `medbench`, allowed to create databases, so that tests can make one per store). The
# server's data folder is the first argument; it is created fresh.
set -euo pipefail
data_dir=${1:?usage: postgres.sh DATA_DIR [PORT]}
port=${2:-55432}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

# initdb refuses to run as root, so the server runs as the `postgres` system user.
rm -rf "$data_dir"
mkdir -p "$data_dir"
chown postgres "$data_dir"
run_as_postgres() { su postgres -s /bin/sh -c "$*"; }
run_as_postgres "$bin/initdb -D '$data_dir' -A trust -U postgres" >&2
run_as_postgres "$bin/pg_ctl -D '$data_dir' -l '$data_dir/server.log' -w \
    -o \"-c listen_addresses=127.0.0.1 -p $port -k '$data_dir' -c max_connections=200\" start" >&2
run_as_postgres "$bin/psql -h 127.0.0.1 -p $port -U postgres -v ON_ERROR_STOP=1 -q \
    -c \"CREATE ROLE medbench LOGIN CREATEDB PASSWORD 'medbench'\" -c 'CREATE DATABASE medbench OWNER medbench'" >&2
echo "postgresql+psycopg2://medbench:medbench@127.0.0.1:$port/medbench"
