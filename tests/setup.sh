#!/usr/bin/env bash
# Installs what the test suite needs and the machine lacks, and says what it does:
# Debian packages (apt-get, as root), the nightly toolchain's Miri component.
# Idempotent: installs nothing that is already there.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have strace || need_pkgs+=(strace)
have pkg-config || need_pkgs+=(pkg-config)
have cc || need_pkgs+=(gcc libc6-dev)
have readelf || need_pkgs+=(binutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
# The PostgreSQL server (initdb, pg_ctl, postgres) for the live-database tests and
# the demo; the package also creates the `postgres` user the servers run as.
pg_server() {
    for d in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/*/bin; do
        [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && return 0
    done
    return 1
}
pg_server && id postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
# systemd-analyze, to verify the unit in packaging/; systemd-nspawn and debootstrap,
# to run it under a real systemd in a container (tests/packaging/test_systemd.py).
have systemd-analyze || need_pkgs+=(systemd)
have systemd-nspawn || need_pkgs+=(systemd-container)
have debootstrap || [ -x /usr/sbin/debootstrap ] || need_pkgs+=(debootstrap)
# The Debian package: dpkg-architecture and dpkg-shlibdeps (dpkg-dev) and xz, which
# cargo-deb uses; adduser, which the package's postinst runs.
have dpkg-architecture && have dpkg-shlibdeps || need_pkgs+=(dpkg-dev)
have xz || need_pkgs+=(xz-utils)
have adduser || [ -x /usr/sbin/adduser ] || need_pkgs+=(adduser)
# HAProxy, for the failover comparison (dbha-bench haproxy).
have haproxy || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
# nft, which blackholes a server's port for that comparison (dbha-bench haproxy).
have nft || [ -x /usr/sbin/nft ] || need_pkgs+=(nftables)
# unshare (util-linux) and ip (iproute2): a namespace whose resolver never answers
# (tests/tests/hardening.rs).
have unshare || need_pkgs+=(util-linux)
have ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need_pkgs+=(iproute2)
# etcd and Patroni, for the Patroni check and the DCS tests (tests/tests/patroni.rs):
# a real cluster on loopback. Debian's patroni needs python3-etcd for etcd3.
have etcd || need_pkgs+=(etcd-server)
have etcdctl || need_pkgs+=(etcd-client)
have patroni && /usr/bin/python3 -c 'import etcd' 2>/dev/null || need_pkgs+=(patroni python3-etcd)
# MariaDB, for the mysql check (tests/tests/mariadb.rs): servers on loopback run
# from scratch directories as the mysql user the package creates.
have mariadbd || [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
have mariadb || need_pkgs+=(mariadb-client)
# mysqlclient (the Django MySQL tests, tests/django_app/test_mysql.py) builds
# against libmariadb with pkg-config.
pkg-config --exists libmariadb 2>/dev/null || need_pkgs+=(libmariadb-dev)

if ((${#need_pkgs[@]})); then
    echo "setup: installing Debian packages: ${need_pkgs[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: not root: install them with: sudo apt-get install ${need_pkgs[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# The etcd, patroni and mariadb packages enable system services on installation; the tests
# start their own on loopback, and nothing of the packages' may be left running.
if [ -d /run/systemd/system ]; then
    for unit in etcd patroni mariadb; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
            echo "setup: stopping and disabling the $unit service the package enabled"
            systemctl disable --now --quiet "$unit" || true
        fi
    done
elif command -v service >/dev/null 2>&1; then
    for unit in etcd patroni mariadb; do
        if service "$unit" status >/dev/null 2>&1; then
            echo "setup: stopping the $unit service the package started"
            service "$unit" stop >/dev/null 2>&1 || true
        fi
    done
fi

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "setup: installing the nightly toolchain with Miri (for the seqlock's Miri test)"
    rustup toolchain install nightly --profile minimal --component miri,rust-src
fi

# cargo-deb builds the Debian package (packaging/deb/build.sh). Pinned, so that
# every machine builds the same package; it compresses with the xz program.
cargo_deb=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb" ]; then
    echo "setup: installing cargo-deb $cargo_deb (builds the .deb)"
    cargo install --quiet --locked --no-default-features cargo-deb --version "$cargo_deb"
fi

# cargo-fuzz runs the fuzz targets (fuzz/) on the nightly toolchain installed above.
cargo_fuzz=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz" ]; then
    echo "setup: installing cargo-fuzz $cargo_fuzz (runs the fuzz targets)"
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz"
fi

# The Python package's tests and the Django end-to-end test run in .venv (ignored by
# git), with Django, psycopg, mysqlclient, PyMySQL and pytest from PyPI.
venv=.venv
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating the Python environment in $venv (Django, psycopg, mysqlclient, PyMySQL, pytest)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$venv/.requirements"
fi
