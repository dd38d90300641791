#!/bin/sh
# The entrypoint of every OpenClaw container (services.openclaw-containers; the container
# test runs this same file). The container has no network but loopback: it starts the
# bridges that are its only ways out and in, waits until the agent's proxy port listens, and
# runs the agent (the image's command, or the one podman is given).
#
#   CREDPROXY_SOCKET        the instance's own credproxy listener, bind-mounted from the host
#   CREDPROXY_PROXY_PORT    127.0.0.1 port bridged to it: the agent's HTTPS_PROXY/HTTP_PROXY
#   OPENCLAW_HOST_SOCKETS   "NAME:PORT ...": for each, the host reaches 127.0.0.1:PORT in the
#                           container through OPENCLAW_SOCKET_DIR/NAME.sock (gateway, webchat)
#   CREDPROXY_BRIDGE        the bridge command (default credproxy-bridge; "credproxy bridge")
#
# POSIX sh, busybox or coreutils: printf, grep, sleep.
set -eu

bridge=${CREDPROXY_BRIDGE:-credproxy-bridge}
: "${CREDPROXY_SOCKET:?the instance's proxy socket}"
: "${CREDPROXY_PROXY_PORT:?the agent's proxy port}"

# $bridge is a command and its first words ("credproxy bridge"): split on purpose.
# shellcheck disable=SC2086
$bridge "tcp:127.0.0.1:${CREDPROXY_PROXY_PORT}" "unix:${CREDPROXY_SOCKET}" &

for pair in ${OPENCLAW_HOST_SOCKETS:-}; do
  name=${pair%%:*}
  port=${pair##*:}
  # shellcheck disable=SC2086
  $bridge "unix:${OPENCLAW_SOCKET_DIR:?the directory of the host-access sockets}/${name}.sock" "tcp:127.0.0.1:${port}" &
done

# Wait (bounded) until the proxy port listens: /proc/net/tcp shows 127.0.0.1:PORT in state
# 0A (LISTEN) as "0100007F:<PORT in hex> 00000000:0000 0A".
hex=$(printf '%04X' "$CREDPROXY_PROXY_PORT")
tries=0
until grep -q "0100007F:${hex} 00000000:0000 0A" /proc/net/tcp 2>/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -gt 400 ]; then
    echo "openclaw-container-entrypoint: the proxy bridge is not listening on 127.0.0.1:${CREDPROXY_PROXY_PORT}" >&2
    exit 1
  fi
  sleep 0.05
done

exec "$@"
