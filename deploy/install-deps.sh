#!/usr/bin/env bash
# Installs everything llmq needs to build, test and run its demo on Debian 12.
# Idempotent: packages already present are left alone; safe to run again.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libzmq3-dev libczmq-dev      # ZeroMQ transport (ROUTER/DEALER) and zloop/zsock helpers
  libmsgpack-dev               # wire codec (msgpack-c)
  liblmdb-dev lmdb-utils       # durable queue store; mdb_copy/mdb_stat for operators
  libcurl4-openssl-dev         # provider HTTP calls (multi interface, HTTP/2, TLS)
  ca-certificates              # the system CAs the worker trusts by default (only a
                               # Recommends of libcurl, which --no-install-recommends skips)
  openssl                      # test_tls makes a throwaway CA and certificate with it
  libjansson-dev               # JSON for provider bodies, batch files, config values
  libssl-dev                   # libcrypto's SHA-256: the broker's response cache keys
  libinih-dev                  # config file parser (INI) with line numbers on errors
  libmicrohttpd-dev            # HTTP server for the mock provider (and the broker's HTTP side)
  check                        # unit and integration tests (run by ctest)
  prometheus                   # promtool: test_http lints the broker's /metrics with it
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
