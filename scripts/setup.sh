#!/usr/bin/env bash
# Brings a machine to the state the tests, the demo and the bench need. Every step checks first
# and does nothing when already satisfied, so a second run takes well under a few seconds.
# Works on a fresh Debian bookworm with Node 20, npm and Go; run as root (or with sudo).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TOOLS_BIN="$ROOT/.tools/bin"
TEMPORAL_VERSION=v1.5.1
# MinIO publishes no semver tags, so the Go module proxy only serves pseudo-versions. The release
# RELEASE.2025-10-15T17-29-55Z is v0.0.0-20251015172955-9e49d5e7a648, but the module proxy this
# project can reach answers 403 for it; the final commit of the (since archived) repository is
# served, has the identical go.mod, and is what we build.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c

log() { echo "setup: $*" >&2; }

SUDO=()
if [[ $EUID -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  fi
fi

# go needs HOME for its module and build caches; some CI shells start without it.
if [[ -z ${HOME:-} ]]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi

# Go may be installed without being on PATH (the official tarball goes to /usr/local/go).
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="$PATH:/usr/local/go/bin"
fi

# --- a. Debian packages --------------------------------------------------------------------
# postgresql: the server binaries the catalog tests run (test/helpers/postgres.ts initdb's its own).
DEB_PACKAGES=(util-linux e2fsprogs btrfs-progs xfsprogs coreutils restic zstd procps openssl postgresql)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ $status != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    log "missing Debian packages (${missing[*]}) and not root without sudo; install them by hand"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq >&2
  # Debian's postgresql-<version> would also create a cluster "main" on port 5432 and start it now
  # and at every boot: nothing here uses it (the tests run their own server on a free port), and a
  # start that fails (a container without an init system, the port taken) fails the install. On a
  # machine with no cluster yet, install postgresql-common first and tell it to create none.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && ! compgen -G '/etc/postgresql/*/*/postgresql.conf' >/dev/null; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends postgresql-common >&2
    "${SUDO[@]}" pg_conftool /etc/postgresql-common/createcluster.conf set create_main_cluster false
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- b. npm packages -------------------------------------------------------------------------
if [[ ! -d node_modules || ! -f node_modules/.package-lock.json \
  || package-lock.json -nt node_modules/.package-lock.json ]]; then
  log "npm ci"
  npm ci --no-audit --no-fund >&2
  # npm may rewrite package-lock.json after its hidden lockfile; keep the check from re-firing.
  if [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    touch node_modules/.package-lock.json
  fi
fi

# --- c./d. Go-built tools ----------------------------------------------------------------------
mkdir -p "$TOOLS_BIN"

# True when the binary exists and its embedded build info names module $2 at version $3.
# (go install does not stamp the Temporal CLI's own --version, which prints 0.0.0-DEV, so the
# module version recorded in the binary is the reliable check.)
built_from() {
  local bin=$1 module=$2 version=$3
  [[ -x $bin ]] || return 1
  go version -m "$bin" 2>/dev/null | awk -v m="$module" -v v="$version" '
    $1 == "mod" && $2 == m && $3 == v { found = 1 } END { exit !found }'
}

temporal_ok() {
  built_from "$TOOLS_BIN/temporal" github.com/temporalio/cli "$TEMPORAL_VERSION" \
    || { [[ -x "$TOOLS_BIN/temporal" ]] \
      && "$TOOLS_BIN/temporal" --version 2>/dev/null | grep -qF "${TEMPORAL_VERSION#v}"; }
}

minio_ok() { built_from "$TOOLS_BIN/minio" github.com/minio/minio "$MINIO_VERSION"; }

# Another process (a second setup run, or a build started by hand) may be compiling the same tool:
# wait for it instead of racing it into the same output file.
wait_for_foreign_build() {
  local pattern=$1 what=$2 waited=0
  while pgrep -f "$pattern" >/dev/null 2>&1; do
    if ((waited == 0)); then log "waiting for a running build of $what"; fi
    sleep 5
    waited=$((waited + 5))
  done
}

go_install() {
  local what=$1 pkg=$2 check=$3 lockfile="$ROOT/.tools/.$1.lock"
  if ! command -v go >/dev/null 2>&1; then
    log "go is not installed; cannot build $what"
    exit 1
  fi
  (
    flock 9
    wait_for_foreign_build "go install ${pkg%@*}" "$what"
    if "$check"; then exit 0; fi
    log "building $what ($pkg); this takes several minutes the first time"
    local start=$SECONDS
    GOBIN="$TOOLS_BIN" go install "$pkg" >&2
    log "built $what in $((SECONDS - start)) s"
  ) 9>"$lockfile"
  "$check" || { log "$what is still missing or wrong after the build"; exit 1; }
}

if ! temporal_ok; then
  go_install temporal "github.com/temporalio/cli/cmd/temporal@${TEMPORAL_VERSION}" temporal_ok
fi

if ! minio_ok; then
  go_install minio "github.com/minio/minio@${MINIO_VERSION}" minio_ok
fi

# --- e. TypeScript build ---------------------------------------------------------------------
if [[ -d src || -d bin ]]; then
  inputs=()
  for p in src bin bench test/helpers tsconfig.json; do
    [[ -e $p ]] && inputs+=("$p")
  done
  stamp=dist/.buildstamp
  if [[ ! -f $stamp ]] || [[ -n $(find "${inputs[@]}" -newer "$stamp" -print -quit 2>/dev/null) ]]; then
    log "npm run build"
    mkdir -p dist
    # Stamp taken before compiling, so an edit made while tsc runs still triggers the next build.
    pending=dist/.buildstamp.pending
    touch "$pending"
    if npm run --silent build >&2; then
      mv -f "$pending" "$stamp"
    else
      rm -f "$pending"
      log "build failed"
      exit 1
    fi
  fi
fi
