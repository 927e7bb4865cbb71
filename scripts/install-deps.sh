#!/usr/bin/env bash
# Install the system packages dbswarm's local services need (Debian/Ubuntu).
# Only installs what is missing; prints "deps: all present" when nothing to do.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
PG_MAJOR="${DBSWARM_PG_MAJOR:-15}"
PG_LIB="/usr/lib/postgresql/${PG_MAJOR}/lib"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"

die() { echo "deps: error: $*" >&2; exit 1; }

pkg_installed() {
    command -v dpkg-query >/dev/null 2>&1 || return 1
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# command -v, also looking in sbin dirs that a non-root PATH may lack
have_cmd() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local d
    for d in /usr/local/sbin /usr/sbin /sbin; do
        [[ -x "$d/$1" ]] && return 0
    done
    return 1
}

missing=()

if pkg_installed "postgresql-${PG_MAJOR}" || [[ -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/initdb" ]]; then
    # contrib (pg_stat_statements) ships inside postgresql-NN on current Debian;
    # only ask for postgresql-contrib if the module is actually absent.
    if [[ ! -e "$PG_LIB/pg_stat_statements.so" ]]; then
        missing+=("postgresql-contrib")
    fi
else
    missing+=("postgresql-${PG_MAJOR}")
fi

if ! pkg_installed "postgresql-${PG_MAJOR}-hypopg" && [[ ! -e "$PG_LIB/hypopg.so" ]]; then
    missing+=("postgresql-${PG_MAJOR}-hypopg")
fi

if ! pkg_installed nats-server && ! have_cmd nats-server; then
    missing+=("nats-server")
fi

if ! { pkg_installed redis-server || have_cmd redis-server; } || ! have_cmd redis-cli; then
    missing+=("redis-server")
fi

if ! pkg_installed protobuf-compiler && ! have_cmd protoc; then
    missing+=("protobuf-compiler")
fi

# The pg_query crate (the migration linter's SQL parser) compiles libpg_query's C
# sources with cc and generates its bindings with bindgen, which loads libclang.so
# and needs clang's own headers (stddef.h): both come with libclang-dev.
if ! pkg_installed libclang-dev && ! compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null &&
    ! compgen -G '/usr/lib/*/libclang.so' >/dev/null; then
    missing+=("libclang-dev")
fi
if ! have_cmd cc; then
    missing+=("gcc")
fi

if ((${#missing[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages (${missing[*]}) and apt-get is not available; install them manually"
    if [[ "$(id -u)" -eq 0 ]]; then
        apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    elif command -v sudo >/dev/null 2>&1; then
        apt=(sudo env DEBIAN_FRONTEND=noninteractive apt-get)
    else
        die "missing packages (${missing[*]}); not root and sudo is not installed"
    fi
    echo "deps: installing: ${missing[*]}"
    "${apt[@]}" update -qq
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"
    echo "deps: installed: ${missing[*]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found on PATH. Install Rust with rustup (https://rustup.rs) and make sure ~/.cargo/bin is on PATH (e.g. 'source ~/.cargo/env')."
fi

if ((${#missing[@]} == 0)); then
    echo "deps: all present"
fi
