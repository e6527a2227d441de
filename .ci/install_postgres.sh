#!/usr/bin/env bash
# Installs what tests/test_postgres.py needs: Debian's PostgreSQL server binaries (the tests start
# their own throwaway server from /usr/lib/postgresql/*/bin) and psycopg2 in the active Python
# environment. Idempotent: each part is skipped when already present.
#
# Usage (inside the virtual environment the tests will use):  .ci/install_postgres.sh [--server-only]
set -euo pipefail

have_server_binaries() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null
}

if have_server_binaries; then
    echo "postgresql: server binaries already present ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
else
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    echo "postgresql: installing Debian's server package"
    $SUDO apt-get update -qq
    # postgresql-common would otherwise create and start a system cluster; the tests start their own.
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/50-effnas-no-main.conf >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    have_server_binaries || { echo "postgresql: install finished but no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2; exit 1; }
fi

# The tests run the server as this unprivileged user (PostgreSQL refuses to run as root).
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# --server-only: psycopg2 comes with the project's test extras (pip install -e '.[test]').
[ "${1:-}" = "--server-only" ] && exit 0

PYTHON="${PYTHON:-python}"
if "$PYTHON" -c "import psycopg2" 2>/dev/null; then
    echo "psycopg2: already importable by $("$PYTHON" -c 'import sys; print(sys.executable)')"
else
    echo "psycopg2: installing psycopg2-binary into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install -q "psycopg2-binary>=2.9"
fi
