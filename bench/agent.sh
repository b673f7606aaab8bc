#!/usr/bin/env bash
# Benchmark: what an idle `abkit agent` costs (issue 13). Starts the release
# agent offline on a small disk image (socket API and the TLS listener, one
# health check, the watchdog pinging every 30 s as under systemd with
# WatchdogSec=60), lets the health gate finish, then watches it for
# SECONDS_IDLE seconds (default 30) and prints: resident memory (VmRSS, and
# its peak VmHWM), CPU time used while idle, context switches (wake-ups) and
# threads. Then it answers N_STATUS (default 20) GET /v1/status requests and
# prints the RSS again. The agent also polls a release channel (the bundle it
# runs, as a local path: every check reads and verifies its head and finds
# it up to date) every POLL_INTERVAL (default 10s, to see checks' cost in
# the idle window; the shipped default is 1h; POLL_INTERVAL=off: no polling).
# Goals: idle RSS < 10 MiB; idle CPU ~0 and a handful of wake-ups (nothing
# polls: threads sleep in accept(2), the watchdog in sleep).
#
# Usage: bench/agent.sh        SECONDS_IDLE=60 bench/agent.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_IDLE=${SECONDS_IDLE:-30}
N_STATUS=${N_STATUS:-20}
POLL_INTERVAL=${POLL_INTERVAL:-10s}
. bench/lib.sh
build_abkit
need_tools curl openssl
bench_workdir agent
cd "$WORK"

# A disk built the factory way from a signed 1 MiB bundle.
cp /usr/share/OVMF/OVMF_VARS_4M.fd vars.fd
"$ABKIT" keygen --out release >/dev/null
mkdir keyring && cp release.pub keyring/
head -c 1M /dev/urandom >sys.img
# A tiny PE/COFF EFI application as the bundle's loader (as in install.sh).
tiny_efi boot.efi
"$ABKIT" bundle create --efi boot.efi --system sys.img --version 1.0.0 \
  --compatible bench-os --key release.key -o os.abb >/dev/null 2>&1 ||
  { echo "bench: bundle create failed" >&2; exit 1; }
"$ABKIT" image build --bundle os.abb --keyring keyring -o disk.img --esp-size 33M \
  --system-size 4M --data-size 1M --ovmf-vars vars.fd >/dev/null 2>&1 ||
  { echo "bench: image build failed" >&2; exit 1; }

# TLS: an operator CA, the agent's certificate and a client's.
ssl() { openssl "$@" >/dev/null 2>&1; }
ssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 2 -subj /CN=ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
for n in server client; do
  ssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n
done
printf 'subjectAltName=IP:127.0.0.1\n' >server.ext
printf 'extendedKeyUsage=clientAuth\n' >client.ext
for n in server client; do
  ssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out $n.pem -extfile $n.ext
done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

POLL_ARGS=()
[ "$POLL_INTERVAL" = off ] ||
  POLL_ARGS=(--poll-url "$WORK/os.abb" --poll-interval "$POLL_INTERVAL" --poll-jitter 0s)
WATCHDOG_USEC=60000000 "$ABKIT" agent --disk disk.img --ovmf-vars vars.fd --booted-slot A \
  --socket agent.sock --keyring keyring --health-check true \
  --listen 127.0.0.1:$PORT --tls-cert server.pem --tls-key server.key --client-ca ca.pem \
  "${POLL_ARGS[@]}" 2>agent.log &
AGENT_PID=$!
BENCH_PIDS=$AGENT_PID
for _ in $(seq 100); do
  curl -sf --unix-socket agent.sock http://agent/v1/status 2>/dev/null | grep -q '"phase": "passed"' && break
  sleep 0.1
done
curl -sf --unix-socket agent.sock http://agent/v1/status | grep -q '"phase": "passed"' ||
  { echo "bench: the agent did not come up:" >&2; cat agent.log >&2; exit 1; }
sleep 1

field() { awk -v k="$1:" '$1 == k {print $2}' /proc/$AGENT_PID/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$AGENT_PID/stat; }
switches() { echo $(($(field voluntary_ctxt_switches) + $(field nonvoluntary_ctxt_switches))); }
task_switches() {
  local t=0
  for f in /proc/$AGENT_PID/task/*/status; do
    t=$((t + $(awk '/^(non)?voluntary_ctxt_switches:/ {s += $2} END {print s}' "$f")))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)
rss0=$(field VmRSS)
polls0=$(grep -c 'poll: up to date' agent.log || true)
cpu0=$(cpu_ticks)
sw0=$(task_switches)
sleep "$SECONDS_IDLE"
rss1=$(field VmRSS)
cpu1=$(cpu_ticks)
sw1=$(task_switches)
threads=$(field Threads)
polls1=$(grep -c 'poll: up to date' agent.log || true)
for _ in $(seq "$N_STATUS"); do
  curl -sf --unix-socket agent.sock http://agent/v1/status >/dev/null
done
curl -sf --cacert ca.pem --cert client.pem --key client.key "https://127.0.0.1:$PORT/v1/status" >/dev/null
rss2=$(field VmRSS)
hwm=$(field VmHWM)

mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
printf '\nabkit agent, idle for %s s (offline disk, Unix socket + TLS listener, watchdog 60 s, polling every %s)\n' "$SECONDS_IDLE" "$POLL_INTERVAL"
printf '| %-38s | %-16s |\n' measure value
printf '|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "$(printf -- '-%.0s' {1..18})"
printf '| %-38s | %-16s |\n' "RSS after the health gate" "$(mib "$rss0")"
printf '| %-38s | %-16s |\n' "RSS after ${SECONDS_IDLE} s idle" "$(mib "$rss1")"
printf '| %-38s | %-16s |\n' "RSS after $N_STATUS status + 1 TLS request" "$(mib "$rss2")"
printf '| %-38s | %-16s |\n' "peak RSS (VmHWM)" "$(mib "$hwm")"
printf '| %-38s | %-16s |\n' "CPU while idle" "$(awk -v t=$((cpu1 - cpu0)) -v hz="$HZ" -v s="$SECONDS_IDLE" 'BEGIN {printf "%.2f s (%.3f%%)", t / hz, 100 * t / hz / s}')"
printf '| %-38s | %-16s |\n' "wake-ups while idle (all threads)" "$((sw1 - sw0))"
printf '| %-38s | %-16s |\n' "channel checks while idle" "$((polls1 - polls0))"
printf '| %-38s | %-16s |\n' "threads" "$threads"
awk -v r="$rss1" 'BEGIN {exit !(r < 10240)}' && echo "goal RSS < 10 MiB: met" || echo "goal RSS < 10 MiB: MISSED"
