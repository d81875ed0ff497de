#!/usr/bin/env bash
# Debian packages the test suite uses: chromium (browser tests), redis-server and postgresql
# (scale-out tests), espeak-ng (the simulator's spoken replies; `make run` uses it too), npm
# (`make test` fetches axe-core with it, for the accessibility test). Installs what is
# missing when run as root. Without root it only reports;
# with CI set, anything still missing is an error, so no test that needs it can be skipped.
set -euo pipefail

declare -A probe=(
  [chromium]=/usr/bin/chromium
  [redis-server]=/usr/bin/redis-server
  [postgresql]=/usr/lib/postgresql
  [espeak-ng]=/usr/bin/espeak-ng
  [npm]=/usr/bin/npm
)
# Arguments name a subset (`make run` asks for espeak-ng alone); none means all of them.
wanted=("$@")
[ ${#wanted[@]} -ne 0 ] || wanted=("${!probe[@]}")
missing=()
for package in "${wanted[@]}"; do
  [ -e "${probe[$package]}" ] || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  missing=()
  for package in "${wanted[@]}"; do
    [ -e "${probe[$package]}" ] || missing+=("$package")
  done
fi
if [ ${#missing[@]} -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
  if [ -n "${CI:-}" ]; then
    exit 1
  fi
fi
