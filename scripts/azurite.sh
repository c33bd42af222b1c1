#!/usr/bin/env bash
# Installs and runs Azurite (Microsoft's Azure Blob Storage implementation,
# npm, pinned) for walarch's Azure tests.
#
#   azurite.sh install
#       npm install azurite@$AZURITE_VERSION into $PREFIX. Skipped when
#       that version is there.
#   azurite.sh start DIR PORT
#       Installs if needed, starts azurite-blob on 127.0.0.1:PORT with its
#       data in DIR, waits until it answers, and creates the container
#       $AZ_CONTAINER (default wal). Writes DIR/pid. With
#       AZURITE_PARENT_PID set, a watchdog stops it when that process exits.
#       Account: Azurite's published development account.
#   azurite.sh request PORT METHOD PATH [FILE]
#       One request signed with the account key (Shared Key), PATH below
#       the account (/wal?restype=container, /wal/NAME), FILE the body of
#       a PUT (a block blob). Prints the HTTP status.
#   azurite.sh sas
#       Prints an account SAS token for the blob service (read, add,
#       create, write, delete, list; valid until 2099), signed with the key.
#   azurite.sh stop DIR
set -euo pipefail

AZURITE_VERSION=3.37.0
PREFIX=${WALARCH_AZURITE_PREFIX:-/var/cache/walarch/azurite}
BIN=$PREFIX/node_modules/.bin/azurite-blob
ACCOUNT=devstoreaccount1
KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

install() {
    if [ -x "$BIN" ] && grep -q "\"version\": \"$AZURITE_VERSION\"" "$PREFIX/node_modules/azurite/package.json" 2>/dev/null; then
        return
    fi
    echo "==> azurite $AZURITE_VERSION -> $PREFIX" >&2
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
    # The servers' restore_command runs as postgres: only the tests start
    # Azurite (as root), but keep the tree readable like the others.
    chmod -R a+rX "$PREFIX"
}

request() {
    local port=$1 method=$2 path=$3 file=${4:-}
    local date len="" ctype="" blob="" query="" res q
    date=$(LC_ALL=C TZ=GMT date '+%a, %d %b %Y %H:%M:%S GMT')
    if [ -n "$file" ]; then
        len=$(stat -c %s "$file")
        [ "$len" = 0 ] && len=""
        ctype=application/octet-stream
        blob="x-ms-blob-type:BlockBlob\n"
    fi
    res="/$ACCOUNT/$ACCOUNT${path%%\?*}"
    if [[ $path == *\?* ]]; then
        query=${path#*\?}
        for q in $(tr '&' '\n' <<<"$query" | sort); do
            res+="\n${q%%=*}:${q#*=}"
        done
    fi
    local sts="$method\n\n\n$len\n\n$ctype\n\n\n\n\n\n\n${blob}x-ms-date:$date\nx-ms-version:2021-08-06\n$res"
    local sig
    sig=$(printf '%b' "$sts" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(keyhex)" -binary | base64 -w0)
    local args=(-sS -o /dev/null -w '%{http_code}' -X "$method"
        -H "x-ms-date: $date" -H "x-ms-version: 2021-08-06"
        -H "Authorization: SharedKey $ACCOUNT:$sig")
    if [ -n "$file" ]; then
        args+=(-H "x-ms-blob-type: BlockBlob" -H "Content-Type: $ctype" --data-binary "@$file")
    else
        args+=(-H "Content-Length: 0")
    fi
    curl "${args[@]}" "http://127.0.0.1:$port/$ACCOUNT$path"
}

keyhex() {
    base64 -d <<<"$KEY" | od -An -tx1 | tr -d ' \n'
}

sas() {
    local sv=2019-12-12 sp=racwdl se=2099-01-01T00:00:00Z sig
    sig=$(printf '%s\n%s\nb\nsco\n\n%s\n\n\n%s\n' "$ACCOUNT" "$sp" "$se" "$sv" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(keyhex)" -binary | base64 -w0)
    printf 'sv=%s&ss=b&srt=sco&sp=%s&se=%s&sig=%s\n' "$sv" "$sp" "$se" \
        "$(printf '%s' "$sig" | sed 's/+/%2B/g; s/\//%2F/g; s/=/%3D/g')"
}

start() {
    local dir=$1 port=$2 container=${AZ_CONTAINER:-wal}
    install
    mkdir -p "$dir"
    "$BIN" --blobHost 127.0.0.1 --blobPort "$port" --location "$dir" --silent \
        --skipApiVersionCheck --loose >"$dir/log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/pid"
    local t0 t1
    t0=$(date +%s%N)
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
        sleep 0.1
    done
    local status
    status=$(request "$port" PUT "/$container?restype=container")
    [ "$status" = 201 ] || { echo "create container: HTTP $status" >&2; exit 1; }
    if [ -n "${AZURITE_PARENT_PID:-}" ]; then
        (while kill -0 "$AZURITE_PARENT_PID" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
         # Azurite does not exit on SIGTERM while idle; its data is
         # thrown away anyway.
         kill -KILL "$pid" 2>/dev/null; rm -rf "$dir") </dev/null >/dev/null 2>&1 &
    fi
    t1=$(date +%s%N)
    printf 'azurite ready in %d ms: pid %d, http://127.0.0.1:%d/%s, container %s\n' \
        $(((t1 - t0) / 1000000)) "$pid" "$port" "$ACCOUNT" "$container"
}

stop() {
    local dir=$1 pid
    pid=$(cat "$dir/pid" 2>/dev/null) || return 0
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cmd=${1:-}
shift || true
case $cmd in
install) install ;;
start) start "$@" ;;
request) request "$@" ;;
sas) sas ;;
stop) stop "$@" ;;
*) echo "usage: azurite.sh install|start DIR PORT|request PORT METHOD PATH [FILE]|sas|stop DIR" >&2; exit 2 ;;
esac
