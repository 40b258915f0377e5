#!/bin/sh
# scripts/bench-setup.sh: installs the benchmark's peers from Debian (nginx's
# mail proxy, perdition, Dovecot), only those missing; idempotent and quiet.
set -eu

want="nginx-light libnginx-mod-mail perdition dovecot-pop3d procps"
missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "bench-setup: missing Debian packages:$missing" >&2
  echo "bench-setup: run as root, or: sudo apt-get install -y$missing" >&2
  exit 1
fi
echo "bench-setup: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' postinst from starting system-wide nginx/perdition/
# dovecot: the benchmark starts its own on free loopback ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
if ! apt-get install -y -q --no-install-recommends $missing; then
  # A stale or empty package list makes apt-get install fail; refresh once.
  apt-get update -q >/dev/null || true
  apt-get install -y -q --no-install-recommends $missing
fi
