#!/usr/bin/env bash
# Private PostgreSQL / NATS / Redis instances for dbswarm development and tests.
#
#   scripts/services.sh up|down|status|env dev|test|bench
#
# Everything lives under <repo>/.dbswarm/<profile>/ and listens on 127.0.0.1 only.
# The system services (and the system PostgreSQL cluster on 5432) are never touched.
# "bench" is an alias for the "test" instances.
# Calls for one profile may run at the same moment: up/down take turns on a
# lock, and up reuses what runs (repairing lost pid files).
#
# Port overrides: DBSWARM_PG_PORT, DBSWARM_NATS_PORT, DBSWARM_REDIS_PORT.
# PostgreSQL binaries: DBSWARM_PG_BIN (default /usr/lib/postgresql/15/bin).
set -euo pipefail

usage() {
    echo "usage: $0 up|down|status|env dev|test|bench" >&2
    exit 2
}

die() { echo "services: error: $*" >&2; exit 1; }
warn() { echo "services: warning: $*" >&2; }

[[ $# -eq 2 ]] || usage
ACTION="$1"
case "$2" in
    dev) PROFILE=dev; DEF_PG=54320; DEF_NATS=42220; DEF_REDIS=63790 ;;
    test | bench) PROFILE=test; DEF_PG=54330; DEF_NATS=42230; DEF_REDIS=63800 ;;
    *) usage ;;
esac

PG_PORT="${DBSWARM_PG_PORT:-$DEF_PG}"
NATS_PORT="${DBSWARM_NATS_PORT:-$DEF_NATS}"
REDIS_PORT="${DBSWARM_REDIS_PORT:-$DEF_REDIS}"
for v in PG_PORT NATS_PORT REDIS_PORT; do
    p="${!v}"
    [[ "$p" =~ ^[0-9]+$ ]] && ((p >= 1 && p <= 65535)) || die "DBSWARM_$v='$p' is not a valid port"
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BASE="$REPO/.dbswarm"
PDIR="$BASE/$PROFILE"

PG_DATA="$PDIR/pg"
PG_SOCK="$PDIR/pg-socket"
PG_LOG="$PDIR/pg.log"
NATS_DIR="$PDIR/nats"
NATS_PID="$NATS_DIR/nats.pid"
NATS_LOG="$NATS_DIR/nats.log"
NATS_PORTFILE="$NATS_DIR/port"
REDIS_DIR="$PDIR/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"
REDIS_PORTFILE="$REDIS_DIR/port"
ENV_FILE="$PDIR/env"

IS_ROOT=0
[[ "$(id -u)" -eq 0 ]] && IS_ROOT=1

# ---------------------------------------------------------------- helpers

# Locate a binary, also looking in sbin dirs a non-root PATH may lack.
find_bin() {
    local name="$1" d
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    for d in /usr/local/sbin /usr/sbin /sbin; do
        [[ -x "$d/$name" ]] && { echo "$d/$name"; return 0; }
    done
    return 1
}

pg_bindir() {
    local d
    if [[ -n "${DBSWARM_PG_BIN:-}" ]]; then
        d="$DBSWARM_PG_BIN"
    elif [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        d=/usr/lib/postgresql/15/bin
    elif command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/pg_ctl" ]]; then
        d="$(pg_config --bindir)"
    elif command -v pg_ctl >/dev/null 2>&1; then
        d="$(dirname "$(command -v pg_ctl)")"
    else
        die "PostgreSQL 15 binaries not found (run scripts/install-deps.sh or set DBSWARM_PG_BIN)"
    fi
    [[ -x "$d/pg_ctl" && -x "$d/initdb" ]] || die "no pg_ctl/initdb in '$d'"
    echo "$d"
}

# Does something accept TCP connections on 127.0.0.1:$1 ?
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# pid from pid file if it names a live process whose command line contains $2
live_pid() {
    local file="$1" pattern="$2" pid
    [[ -f "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file" 2>/dev/null || true)"
    pid_alive "$pid" || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern" || return 1
    fi
    echo "$pid"
}

wait_pid_gone() {
    local pid="$1" i
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    return 1
}

port_taken_error() {
    local what="$1" port="$2" var="$3"
    die "$what port $port on 127.0.0.1 is already in use by another process (not this checkout's $PROFILE instance). Free it or pick another port with $var=<port>."
}

rel() { echo "${1#"$REPO"/}"; }

# Run a PostgreSQL server-side tool as the data directory owner.
# (fd 9 = our lock; daemons must not inherit it or the lock is held forever)
as_pg() {
    if ((IS_ROOT)); then
        (cd / && runuser -u postgres -- "$@" 9>&-)
    else
        "$@" 9>&-
    fi
}

sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

# --------------------------------------------------------------- postgres

pg_running() { as_pg "$PGBIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

pg_running_port() {
    # line 4 of postmaster.pid is the port
    sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9'
}

pg_check_traversable() {
    as_pg test -x "$PDIR" -a -w "$PG_DATA" && return 0
    local p="" part
    IFS='/' read -r -a parts <<<"${PDIR#/}"
    for part in "${parts[@]}"; do
        p="$p/$part"
        if ! as_pg test -x "$p"; then
            die "PostgreSQL must run as user 'postgres' (it refuses root), but 'postgres' cannot traverse '$p'. Fix with: chmod o+x '$p' (or clone the repo somewhere like /work or /tmp)."
        fi
    done
    die "user 'postgres' cannot write to '$PG_DATA'"
}

pg_write_conf() {
    local sockdir="$PG_SOCK"
    # sun_path is 108 bytes; socket name is "/.s.PGSQL.<port>" (<=16 chars)
    if ((${#PG_SOCK} > 90)); then
        warn "repo path too long for a unix socket; PostgreSQL will listen on TCP only"
        sockdir=""
    fi
    cat >"$PG_DATA/dbswarm.conf" <<CONF
# Generated by scripts/services.sh on every 'up'; edits will be overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = $(sql_quote "$sockdir")
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
shared_preload_libraries = 'pg_stat_statements'
logging_collector = off
CONF
    if ! grep -q "^include_if_exists = 'dbswarm.conf'" "$PG_DATA/postgresql.conf"; then
        printf "\n# dbswarm local settings\ninclude_if_exists = 'dbswarm.conf'\n" >>"$PG_DATA/postgresql.conf"
    fi
    ((IS_ROOT)) && chown postgres:postgres "$PG_DATA/dbswarm.conf"
    return 0
}

pg_up() {
    PGBIN="$(pg_bindir)"
    local state=reused
    if ((IS_ROOT)); then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL as"
        command -v runuser >/dev/null 2>&1 || die "running as root but 'runuser' is not available"
    fi

    mkdir -p "$PG_DATA" "$PG_SOCK"
    touch "$PG_LOG"
    if ((IS_ROOT)); then
        chmod o+x "$BASE" "$PDIR"
        if [[ "$(stat -c %U "$PG_DATA")" != postgres ]]; then
            chown -R postgres:postgres "$PG_DATA"
        fi
        chown postgres:postgres "$PG_SOCK" "$PG_LOG"
        pg_check_traversable
    fi

    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        echo "postgres ($PROFILE): initdb into $(rel "$PG_DATA")"
        as_pg "$PGBIN/initdb" -D "$PG_DATA" --auth=trust --username=postgres \
            --encoding=UTF8 --locale=C >"$PDIR/initdb.log" 2>&1 ||
            { cat "$PDIR/initdb.log" >&2; die "initdb failed (log: $(rel "$PDIR/initdb.log"))"; }
    fi

    if pg_running; then
        local cur
        cur="$(pg_running_port)"
        if [[ "$cur" != "$PG_PORT" ]]; then
            echo "postgres ($PROFILE): running on port $cur, restarting on $PG_PORT"
            as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
        fi
    fi

    if ! pg_running; then
        port_open "$PG_PORT" && port_taken_error PostgreSQL "$PG_PORT" DBSWARM_PG_PORT
        pg_write_conf
        as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null ||
            { tail -n 30 "$PG_LOG" >&2; die "PostgreSQL failed to start (log: $(rel "$PG_LOG"))"; }
        state=started
    else
        pg_write_conf # keep the file current; takes effect on next start
    fi

    local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
    if [[ "$("${psql[@]}" -tAc "select 1 from pg_database where datname = 'dbswarm'")" != 1 ]]; then
        "${psql[@]}" -c "create database dbswarm" >/dev/null
    fi
    printf '%-9s %-5s %-8s 127.0.0.1:%-6s log: %s\n' postgres "$PROFILE" "$state" "$PG_PORT" "$(rel "$PG_LOG")"
}

pg_down() {
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        printf '%-9s %-5s %s\n' postgres "$PROFILE" "not running"
        return 0
    fi
    PGBIN="$(pg_bindir)"
    if pg_running; then
        as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
        printf '%-9s %-5s %s\n' postgres "$PROFILE" stopped
    else
        printf '%-9s %-5s %s\n' postgres "$PROFILE" "not running"
    fi
}

pg_status() {
    if [[ -f "$PG_DATA/PG_VERSION" ]] && PGBIN="$(pg_bindir)" && pg_running; then
        printf '%-9s %-5s running  127.0.0.1:%s (pid %s)\n' postgres "$PROFILE" \
            "$(pg_running_port)" "$(head -n1 "$PG_DATA/postmaster.pid")"
    else
        printf '%-9s %-5s stopped\n' postgres "$PROFILE"
    fi
}

# ------------------------------------------------------------------- nats

# This profile's nats-server found by its JetStream directory, for when its
# pid file is lost (e.g. overwritten by a second instance that failed to
# bind, as an older version of this script let happen).
nats_by_store() {
    local pid
    command -v pgrep >/dev/null 2>&1 || return 1
    for pid in $(pgrep -x nats-server || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " -sd $NATS_DIR/jetstream "; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

nats_pid() { live_pid "$NATS_PID" nats-server || nats_by_store; }

nats_up() {
    local bin pid state=reused i
    bin="$(find_bin nats-server)" || die "nats-server not found (run scripts/install-deps.sh)"
    mkdir -p "$NATS_DIR/jetstream"

    if pid="$(nats_pid)"; then
        echo "$pid" >"$NATS_PID"
        if [[ "$(cat "$NATS_PORTFILE" 2>/dev/null)" != "$NATS_PORT" ]]; then
            echo "nats ($PROFILE): running on another port, restarting on $NATS_PORT"
            nats_down >/dev/null
            pid=""
        fi
    else
        pid=""
    fi

    if [[ -z "$pid" ]]; then
        rm -f "$NATS_PID" "$NATS_PID.new"
        port_open "$NATS_PORT" && port_taken_error NATS "$NATS_PORT" DBSWARM_NATS_PORT
        echo "$NATS_PORT" >"$NATS_PORTFILE"
        # max_payload only exists in the config file: 8 MB leaves room for
        # dbswarm's largest event (event_bytes_max) plus its headers.
        printf 'max_payload: 8388608\n' >"$NATS_DIR/nats.conf"
        # The pid file becomes $NATS_PID only once this instance serves: one
        # that fails to bind writes its pid first and must not replace the
        # running instance's.
        setsid nohup "$bin" -c "$NATS_DIR/nats.conf" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_DIR/jetstream" \
            --pid "$NATS_PID.new" -l "$NATS_LOG" </dev/null >>"$NATS_DIR/nats.out" 2>&1 9>&- &
        local launched=$!
        for ((i = 0; i < 300; i++)); do
            port_open "$NATS_PORT" && break
            if ! pid_alive "$launched" && ! live_pid "$NATS_PID.new" nats-server >/dev/null; then
                break
            fi
            sleep 0.1
        done
        for ((i = 0; i < 50; i++)); do
            live_pid "$NATS_PID.new" nats-server >/dev/null && break
            sleep 0.1
        done
        if ! port_open "$NATS_PORT" || ! live_pid "$NATS_PID.new" nats-server >/dev/null; then
            rm -f "$NATS_PID.new"
            tail -n 20 "$NATS_LOG" "$NATS_DIR/nats.out" >&2 2>/dev/null || true
            die "nats-server did not start serving on 127.0.0.1:$NATS_PORT within 30s (log: $(rel "$NATS_LOG"))"
        fi
        mv -f "$NATS_PID.new" "$NATS_PID"
        state=started
    fi
    printf '%-9s %-5s %-8s 127.0.0.1:%-6s log: %s\n' nats "$PROFILE" "$state" "$NATS_PORT" "$(rel "$NATS_LOG")"
}

nats_down() {
    local pid
    if pid="$(nats_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_pid_gone "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_pid_gone "$pid" || true
        fi
        rm -f "$NATS_PID"
        printf '%-9s %-5s %s\n' nats "$PROFILE" stopped
    else
        rm -f "$NATS_PID"
        printf '%-9s %-5s %s\n' nats "$PROFILE" "not running"
    fi
}

nats_status() {
    local pid
    if pid="$(nats_pid)"; then
        printf '%-9s %-5s running  127.0.0.1:%s (pid %s)\n' nats "$PROFILE" "$(cat "$NATS_PORTFILE" 2>/dev/null)" "$pid"
    else
        printf '%-9s %-5s stopped\n' nats "$PROFILE"
    fi
}

# ------------------------------------------------------------------ redis

redis_ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == PONG ]]; }

# This profile's redis-server on its port, for when its pid file is lost:
# the one working in this profile's directory.
redis_by_port() {
    local dir pid
    dir="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get dir 2>/dev/null | sed -n 2p)"
    [[ -n "$dir" && "$dir" == "$REDIS_DIR" ]] || return 1
    pid="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')"
    pid_alive "$pid" || return 1
    echo "$pid"
}

redis_pid() { live_pid "$REDIS_PID" redis-server || redis_by_port; }

redis_up() {
    local pid state=reused i
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (run scripts/install-deps.sh)"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (run scripts/install-deps.sh)"
    mkdir -p "$REDIS_DIR"

    if pid="$(redis_pid)"; then
        echo "$pid" >"$REDIS_PID"
        if [[ "$(cat "$REDIS_PORTFILE" 2>/dev/null)" != "$REDIS_PORT" ]]; then
            echo "redis ($PROFILE): running on another port, restarting on $REDIS_PORT"
            redis_down >/dev/null
            pid=""
        fi
    else
        pid=""
    fi

    if [[ -z "$pid" ]]; then
        rm -f "$REDIS_PID"
        port_open "$REDIS_PORT" && port_taken_error Redis "$REDIS_PORT" DBSWARM_REDIS_PORT
        echo "$REDIS_PORT" >"$REDIS_PORTFILE"
        redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" \
            --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
            --save "" --appendonly no </dev/null >/dev/null 9>&-
        for ((i = 0; i < 300; i++)); do
            redis_ping "$REDIS_PORT" && break
            sleep 0.1
        done
        if ! redis_ping "$REDIS_PORT"; then
            tail -n 20 "$REDIS_LOG" >&2 2>/dev/null || true
            die "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT within 30s (log: $(rel "$REDIS_LOG"))"
        fi
        state=started
    fi
    printf '%-9s %-5s %-8s 127.0.0.1:%-6s log: %s\n' redis "$PROFILE" "$state" "$REDIS_PORT" "$(rel "$REDIS_LOG")"
}

redis_down() {
    local pid port
    if pid="$(redis_pid)"; then
        port="$(cat "$REDIS_PORTFILE" 2>/dev/null || true)"
        if [[ -n "$port" ]]; then
            redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
        fi
        if ! wait_pid_gone "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$REDIS_PID"
        printf '%-9s %-5s %s\n' redis "$PROFILE" stopped
    else
        rm -f "$REDIS_PID"
        printf '%-9s %-5s %s\n' redis "$PROFILE" "not running"
    fi
}

redis_status() {
    local pid
    if pid="$(redis_pid)"; then
        printf '%-9s %-5s running  127.0.0.1:%s (pid %s)\n' redis "$PROFILE" "$(cat "$REDIS_PORTFILE" 2>/dev/null)" "$pid"
    else
        printf '%-9s %-5s stopped\n' redis "$PROFILE"
    fi
}

# ------------------------------------------------------------ backup key

BACKUP_KEY="$PDIR/backup.key"

# A random AES-256 key for this profile's backups (64 hex characters),
# readable by its owner only; owned by postgres when we are root, since
# PostgreSQL's archive_command (dbswarm backup wal-push) reads it too.
# The repository is $PDIR/backups: for local use only; in production keep
# the key away from the repository.
backup_key_up() {
    if [[ ! -s "$BACKUP_KEY" ]]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$BACKUP_KEY.tmp" && echo >>"$BACKUP_KEY.tmp")
        mv -f "$BACKUP_KEY.tmp" "$BACKUP_KEY"
        echo "backup ($PROFILE): new key in $(rel "$BACKUP_KEY")"
    fi
    ((IS_ROOT)) && chown postgres:postgres "$BACKUP_KEY"
    mkdir -p "$PDIR/backups" "$PDIR/scratch"
    return 0
}

# ------------------------------------------------------------------- main

# Serializes up/down of one profile (parallel make, two terminals): two at
# once would both start NATS, and the one that cannot bind would leave
# neither recorded as running. Never skipped: without a lock, concurrent
# calls are not safe.
lock() {
    command -v flock >/dev/null 2>&1 || die "flock (util-linux) is needed to serialize concurrent calls of this script"
    exec 9>"$PDIR/.lock"
    flock -w 180 9 || die "timed out waiting for $(rel "$PDIR/.lock")"
    # Some network and FUSE file systems accept flock without excluding
    # anyone: then a lock file in /tmp (always local) stands in.
    if flock -n "$PDIR/.lock" true 2>/dev/null; then
        local fallback
        fallback="/tmp/dbswarm-services-$(printf '%s' "$PDIR" | cksum | cut -d' ' -f1).lock"
        exec 9>"$fallback"
        flock -w 180 9 || die "timed out waiting for $fallback"
    fi
}

case "$ACTION" in
    up)
        mkdir -p "$PDIR"
        lock
        pg_up
        nats_up
        redis_up
        backup_key_up
        cat >"$ENV_FILE.tmp" <<ENV
export DBSWARM_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/dbswarm
export DBSWARM_ADMIN_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export DBSWARM_NATS_URL=nats://127.0.0.1:$NATS_PORT
export DBSWARM_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export DBSWARM_BACKUP_KEY_FILE=$BACKUP_KEY
export DBSWARM_DATA_DIR=$PDIR
ENV
        mv -f "$ENV_FILE.tmp" "$ENV_FILE"
        ;;
    down)
        [[ -d "$PDIR" ]] || exit 0
        lock
        pg_down
        nats_down
        redis_down
        ;;
    status)
        pg_status
        nats_status
        redis_status
        ;;
    env)
        [[ -f "$ENV_FILE" ]] || die "$(rel "$ENV_FILE") does not exist; run: scripts/services.sh up $PROFILE"
        cat "$ENV_FILE"
        ;;
    *) usage ;;
esac
