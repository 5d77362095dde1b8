#!/usr/bin/env bash
# Makes sure Postgres (127.0.0.1:5432) and NATS with JetStream (127.0.0.1:4222) are running:
# starts them if they are installed but down, installs them from Debian packages if missing.
set -euo pipefail

log() { echo "[infra] $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
fresh_postgres=0
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [[ " ${missing[*]} " == *" postgresql "* ]] && fresh_postgres=1
fi

if ! port_open 5432; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || { log "no Postgres cluster found under /etc/postgresql"; exit 1; }
  if [ "$fresh_postgres" -eq 1 ]; then
    # Local development and CI connect as `postgres` over TCP without a password.
    hba=/etc/postgresql/$version/main/pg_hba.conf
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting Postgres $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 60); do port_open 5432 && break; sleep 0.5; done
port_open 5432 || { log "Postgres did not come up on 127.0.0.1:5432"; exit 1; }

if ! port_open 4222; then
  log "starting nats-server with JetStream"
  as_root mkdir -p /var/lib/nats-server
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  as_root start-stop-daemon --start --oknodo --background --exec "$nats" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
for _ in $(seq 1 60); do port_open 4222 && break; sleep 0.5; done
port_open 4222 || { log "NATS did not come up on 127.0.0.1:4222"; exit 1; }
log "Postgres and NATS are up"
