#!/usr/bin/env bash
# Installs the Docker Compose CLI plugin that tests/deploy uses to parse deploy/compose*.yaml.
#
# No release binary can be downloaded here, so the plugin is built from source: the Go module
# proxy serves github.com/docker/compose/v5 (checked against the checksum database), and it is
# built as its own main module, exactly as upstream builds it (a plain `go install ...@version`
# refuses a module whose go.mod has exclude directives, as compose's has). The result lands in a
# DOCKER_CONFIG-style directory inside the freshrec cache, so nothing global is touched:
#
#   $FRESHREC_CACHE/docker/cli-plugins/docker-compose      (FRESHREC_CACHE: ~/.cache/freshrec)
#
# and `DOCKER_CONFIG=$FRESHREC_CACHE/docker docker compose ...` finds it (the binary also runs on
# its own, as `docker-compose`). Idempotent: returns at once when that version is installed.
# 1.5-3 minutes on 2 shared cores the first time (download and compile); the Go build cache and
# module downloads live in a temporary directory that is removed afterwards.
set -euo pipefail

version="${FRESHREC_COMPOSE_VERSION:-v5.6.0}"
cache="${FRESHREC_CACHE:-$HOME/.cache/freshrec}"
plugins="$cache/docker/cli-plugins"
plugin="$plugins/docker-compose"
stamp="$plugins/docker-compose.version"

if [[ -x "$plugin" && "$(cat "$stamp" 2>/dev/null)" == "$version" ]]; then
    exit 0
fi
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="$PATH:/usr/local/go/bin"  # Go's own install location, not always on PATH
fi
if ! command -v go >/dev/null; then
    echo "install-compose: needs Go (the go command) to build docker compose $version" >&2
    exit 1
fi

echo "install-compose: building docker compose $version from the Go module proxy (once)" >&2
mkdir -p "$plugins"
work="$(mktemp -d "$cache/compose-build.XXXXXX")"
# Go's progress lines go to a log, shown only when something fails.
log="$work/build.log"
trap 'status=$?; [[ $status -eq 0 ]] || tail -n 40 "$log" >&2; rm -rf "$work"' EXIT
export GOPATH="$work/gopath" GOCACHE="$work/gocache" GOFLAGS="-modcacherw -buildvcs=false"
started=$SECONDS

# Outside any module, `go mod download` fetches and verifies one module and prints where it is.
if ! (cd "$work" && go mod download -json "github.com/docker/compose/v5@$version") \
    >"$work/module.json" 2>>"$log"; then
    cat "$work/module.json" >>"$log"
    exit 1
fi
dir="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Dir"])' "$work/module.json")"
cp -r "$dir" "$work/src"
(
    cd "$work/src"
    go build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$version" \
        -o "$work/docker-compose" ./cmd
) >>"$log" 2>&1
"$work/docker-compose" version >/dev/null
mv -f "$work/docker-compose" "$plugin.tmp.$$"
mv -f "$plugin.tmp.$$" "$plugin"
echo "$version" >"$stamp"
echo "install-compose: $plugin ($version) built in $((SECONDS - started)) s" >&2
