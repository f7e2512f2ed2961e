#!/usr/bin/env bash
# Installs the Debian packages that provide the given commands when a command
# is missing. Arguments are command:package pairs, e.g. redis-server:redis-server.
# Without root (and without passwordless sudo) it stops with a message naming
# what to install instead of failing later in a test.
set -euo pipefail

missing_pkgs=()
missing_cmds=()
for pair in "$@"; do
	cmd=${pair%%:*}
	pkg=${pair#*:}
	if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
		missing_pkgs+=("$pkg")
		missing_cmds+=("$cmd")
	fi
done
[ ${#missing_pkgs[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "Missing commands: ${missing_cmds[*]}. Install the Debian packages '${missing_pkgs[*]}' (apt-get install ${missing_pkgs[*]}) or run this as root." >&2
		exit 1
	fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "Missing commands: ${missing_cmds[*]}, and apt-get is not available here. Install them with your package manager (Debian names: ${missing_pkgs[*]})." >&2
	exit 1
fi
echo ">> installing Debian packages: ${missing_pkgs[*]}" >&2
# Debian packages like redis-server try to start their service on install;
# the tests start their own processes, so keep the package scripts from
# starting daemons where the machine has no init system.
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
for cmd in "${missing_cmds[@]}"; do
	if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
		echo "apt-get installed ${missing_pkgs[*]} but '$cmd' is still not on PATH." >&2
		exit 1
	fi
done
