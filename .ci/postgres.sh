# Sourced by .ci/run: start_postgres installs PostgreSQL if it is missing,
# starts a throwaway cluster, exports PULSE_TEST_POSTGRES, and stops the
# cluster when the script exits. Any failure stops CI with the reason.

pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

start_postgres() {
    local bin
    if ! bin=$(pg_bin); then
        if [ "$(id -u)" != 0 ]; then
            echo "postgresql: not installed, and installing it needs root" >&2
            exit 1
        fi
        echo "postgresql: installing the distribution's package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin=$(pg_bin) || { echo "postgresql: installed, but no initdb found" >&2; exit 1; }
    fi
    PG_DIR=$(mktemp -d /tmp/pulse-ci-pg.XXXXXX)
    local port=$((20000 + RANDOM % 20000))
    local as=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$PG_DIR"
        as=(runuser -u postgres --)
    fi
    PG_CTL=("${as[@]}" "$bin/pg_ctl")
    "${as[@]}" "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; echo "postgresql: initdb failed" >&2; exit 1; }
    # fsync and synchronous_commit stay on: the tests are about durability.
    "${PG_CTL[@]}" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c max_connections=300" start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; echo "postgresql: the cluster did not start" >&2; exit 1; }
    trap 'stop_postgres' EXIT
    export PULSE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
    echo "postgresql: $("$bin/postgres" --version) on 127.0.0.1:$port ($PG_DIR)"
}

stop_postgres() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
        "${PG_CTL[@]}" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
