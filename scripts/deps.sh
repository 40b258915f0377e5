#!/bin/sh
# Installs the Debian packages the project needs, and only those missing.
# Usage: scripts/deps.sh build|test|run   (idempotent; quiet when all is there)
set -eu

BUILD="build-essential pkg-config libev-dev libmsgpack-dev libc-ares-dev libssl-dev"
RUN=""
TEST="dovecot-pop3d fetchmail mpop getmail6 curl python3 python3-pytest python3-msgpack openssl procps libdata-messagepack-perl ruby ruby-msgpack nodejs clang-14 libclang-rt-14-dev iproute2 spamassassin spamc spamd clamav-daemon clamdscan"

case "${1:-build}" in
  build) want="$BUILD" ;;
  run)   want="$BUILD $RUN" ;;
  test)  want="$BUILD $TEST" ;;
  *) echo "usage: $0 build|run|test" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing="$missing $p"
  fi
done
# The Node.js example needs npm; Debian's nodejs does not bring it, while
# NodeSource's nodejs has it built in and conflicts with Debian's npm.
if [ "${1:-build}" = test ] && ! command -v npm >/dev/null 2>&1; then
  missing="$missing npm"
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "deps: missing Debian packages:$missing" >&2
  echo "deps: run as root, or: sudo apt-get install -y$missing" >&2
  exit 1
fi
echo "deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A stale or empty package list makes apt-get install fail; refresh once.
apt-get update -q >/dev/null || true
# policy-rc.d keeps Debian's postinst scripts from starting system daemons
# (dovecot, spamd, clamd): tests start their own on loopback ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -q --no-install-recommends $missing
