#!/usr/bin/env bash
# Installs and starts what rollout's demo and tests need on a Debian machine, idempotently:
# a Docker engine that answers, Debian's static busybox (every image is built FROM scratch
# from it: no image is ever pulled), Chromium (the report tests render HTML in it, headless) and
# Prometheus (the kubernetes canary's analysis is tested against a real one, on loopback).
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "setup: installing busybox-static"
  apt_install busybox-static
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (headless, for the report tests)"
  apt_install chromium
fi

if ! command -v prometheus >/dev/null 2>&1; then
  echo "setup: installing prometheus (the canary analysis tests query a real one)"
  apt_install --no-install-recommends prometheus
fi

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "setup: installing docker.io"
    apt_install docker.io
  fi
  echo "setup: starting dockerd"
  as_root sh -c 'nohup dockerd >/tmp/rollout-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not answer within 60 s; see /tmp/rollout-dockerd.log" >&2; exit 1; }
fi
echo "setup: docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})') is answering"
