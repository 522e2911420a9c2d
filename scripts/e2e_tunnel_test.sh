#!/usr/bin/env bash
# End to end on one machine: an echo server, peer B exposing it to peer A only, peer A
# tunnelling to it, and bytes checked both ways through A's tunnel port; then peer C, which B
# does not allow, is refused and B logs the denial with C's peer id. Real processes, real
# sockets; logs are saved to logs/ (and kept in the temp directory on failure).
#
# Usage: scripts/e2e_tunnel_test.sh        (builds the binary first)
# Env:   PUNCHGATE_BIN=path  use an existing binary instead of building
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d -t punchgate-e2e.XXXXXX)
pids=()
status=1

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  mkdir -p logs
  cp "$work"/*.log logs/ 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    rm -rf "$work"
  else
    echo "FAILED: logs kept in $work (and copied to logs/)" >&2
  fi
}
trap cleanup EXIT

# Waits until FILE has a line matching REGEX; prints the first match.
wait_for_line() {
  local file=$1 regex=$2 deadline=$((SECONDS + ${3:-30}))
  while [ $SECONDS -lt $deadline ]; do
    if line=$(grep -m1 -E "$regex" "$file" 2>/dev/null); then
      echo "$line"
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for /$regex/ in $file" >&2
  return 1
}

if [ -z "${PUNCHGATE_BIN:-}" ]; then
  cargo build --quiet -p punchgate
  PUNCHGATE_BIN=$root/target/debug/punchgate
fi

python3 scripts/echo_server.py --port 0 >"$work/echo.log" 2>&1 &
pids+=($!)
echo_addr=$(wait_for_line "$work/echo.log" '^listening on ' | sed 's/^listening on //')
echo "echo server on $echo_addr"

# The operator of B allows A: A's peer id comes from A's key, as a user would get it.
a_id=$("$PUNCHGATE_BIN" --identity "$work/peer-a.key" --print-peer-id)
c_id=$("$PUNCHGATE_BIN" --identity "$work/peer-c.key" --print-peer-id)
echo "peer A is $a_id; peer C (not allowed) is $c_id"

# mDNS stays off: these peers find each other through --bootstrap, and CI must not multicast
# on the host's network.
"$PUNCHGATE_BIN" --identity "$work/peer-b.key" --no-mdns --listen /ip4/127.0.0.1/tcp/0 \
  --expose "echo=$echo_addr" --allow "echo=$a_id" >"$work/peer-b.out" 2>"$work/peer-b.log" &
pids+=($!)
b_addr=$(wait_for_line "$work/peer-b.out" '^listening on /ip4/127.0.0.1/tcp/' | sed 's/^listening on //')
b_id=${b_addr##*/p2p/}
echo "peer B $b_id at $b_addr"

"$PUNCHGATE_BIN" --identity "$work/peer-a.key" --no-mdns --listen /ip4/127.0.0.1/tcp/0 \
  --bootstrap "$b_addr" --tunnel "$b_id:echo@127.0.0.1:0" >"$work/peer-a.out" 2>"$work/peer-a.log" &
pids+=($!)
tunnel=$(wait_for_line "$work/peer-a.out" '^tunnel listening on ' | sed 's/^tunnel listening on //')
echo "peer A tunnel on $tunnel"
[ "$(grep -m1 '^peer id: ' "$work/peer-a.out" | sed 's/^peer id: //')" = "$a_id" ] \
  || { echo "peer A runs with another id than --print-peer-id printed" >&2; exit 1; }

python3 - "$tunnel" <<'PY'
import hashlib, os, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
checks = [b"hello punchgate\n", os.urandom(1 << 20)]
for payload in checks:
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        back = bytearray()
        while chunk := s.recv(65536):
            back += chunk
    if bytes(back) != payload:
        sys.exit(f"echo mismatch: sent {len(payload)} bytes, got {len(back)}")
    print(f"echoed {len(payload)} bytes intact (sha256 {hashlib.sha256(payload).hexdigest()[:16]})")
PY

# Peer C is not allowed: its tunnel connection is closed without a byte, and B logs the denial
# with C's peer id.
"$PUNCHGATE_BIN" --identity "$work/peer-c.key" --no-mdns --listen /ip4/127.0.0.1/tcp/0 \
  --bootstrap "$b_addr" --tunnel "$b_id:echo@127.0.0.1:0" >"$work/peer-c.out" 2>"$work/peer-c.log" &
pids+=($!)
c_tunnel=$(wait_for_line "$work/peer-c.out" '^tunnel listening on ' | sed 's/^tunnel listening on //')
python3 - "$c_tunnel" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=30) as s:
    s.sendall(b"let me in\n")
    back = b""
    try:
        while chunk := s.recv(65536):
            back += chunk
    except ConnectionResetError:
        pass
if back:
    sys.exit(f"peer C, not allowed, got {len(back)} bytes back")
print("peer C (not allowed) got nothing back")
PY
wait_for_line "$work/peer-b.log" "tunnel denied.*$c_id" 10 >/dev/null \
  || { echo "peer B did not log the denial of $c_id" >&2; exit 1; }
wait_for_line "$work/peer-c.log" "client tunnel rejected" 10 >/dev/null \
  || { echo "peer C did not log its refusal" >&2; exit 1; }
echo "peer B denied peer C and logged it"

grep -q 'tunnel accepted' "$work/peer-b.log" || { echo "peer B never logged 'tunnel accepted'" >&2; exit 1; }
grep -q 'client tunnel closed' "$work/peer-a.log" || { echo "peer A never logged 'client tunnel closed'" >&2; exit 1; }
status=0
echo "PASS: client -> A $tunnel -> libp2p -> B -> echo $echo_addr -> back"
