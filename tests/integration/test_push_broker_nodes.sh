#!/usr/bin/env bash
# test_push_broker_nodes.sh - several push brokers (issue 21 items 6 and 7) on one database and
# one Redis: a device on node A gets a message whose wake was published on Redis; a device that
# leaves messages unacknowledged on A and reconnects to B gets each pending message once there
# (with DUP) and none again on A; connecting to B ends the device's connection on A (K line);
# after the push:wake subscription breaks and comes back, every broker re-reads its devices'
# queues, so a message queued while no wake could be published still arrives (kill -9 of a node
# while a developer sends is test_push_e2e.sh's); a node with
# push.broker.workers = 2 runs two processes on one port (SO_REUSEPORT) that both take
# connections, resume each other's TLS sessions, and count in one /metrics; a connection beyond
# push.broker.max_connections is closed.
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_broker_nodes MICA_CERT_PUSH MICA_KEY_PUSH MICA_REDIS_SOCKET \
	MICA_REDIS_PASSWORD_FILE_PUSH MICA_REDIS_ADMIN_PASSWORD_FILE

step="setup"
stack_db_create
stack_push_setup
# shellcheck source=tests/integration/lib-push-broker.sh
. "$ROOT/tests/integration/lib-push-broker.sh"
push_node A
push_node B MICA_PUSH_BROKER_MAX_CONNECTIONS=1
PURL="$URL_A"
broker_app
broker_device D
broker_device E
export TOKEN_D TOKEN_E
ok "nodes A (broker $BPORT_A) and B (broker $BPORT_B) on one database and Redis"

# ---------------------------------------------------------------------------------------------
step="wake across nodes"
node_dev A "$REGID_D" TOKEN_D --count 1 --timeout 20000 >"$W/d.out" 2>&1 &
dpid=$!
wait_line "$W/d.out" '^suback 1$'
enqueue "$REGID_D" "$KEY_D" "through Redis" wake
wait "$dpid" || true
[[ "$(ids "$W/d.out" "$REGID_D" "$KEY_D")" == "$MSG" ]] || check_fail "device on A: $(cat "$W/d.out")"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_D'" 0 ||
	check_fail "row left"
ok "a device on A got the message woken on Redis"

# ---------------------------------------------------------------------------------------------
step="pending once on the other node"
want=""
for i in 1 2 3; do
	enqueue "$REGID_D" "$KEY_D" "pending $i"
	want+="$MSG"$'\n'
done
want="${want%$'\n'}"
node_dev A "$REGID_D" TOKEN_D --count 3 --no-ack >"$W/a.out" 2>&1 || true
[[ "$(ids "$W/a.out" "$REGID_D" "$KEY_D")" == "$want" ]] || check_fail "on A: $(cat "$W/a.out")"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_D' AND attempted" 3 ||
	check_fail "not marked attempted"
node_dev B "$REGID_D" TOKEN_D --count 3 --linger 1500 >"$W/b.out" 2>&1 || true
[[ "$(ids "$W/b.out" "$REGID_D" "$KEY_D")" == "$want" ]] || check_fail "on B: $(cat "$W/b.out")"
[[ "$(grep -c '^msg .* dup=1 ' "$W/b.out")" == 3 ]] || check_fail "B did not set DUP: $(cat "$W/b.out")"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_D'" 0 || check_fail "rows left"
node_dev A "$REGID_D" TOKEN_D --count 1 --timeout 1500 >"$W/a2.out" 2>&1 || true
grep -q '^msg ' "$W/a2.out" && check_fail "A sent again what B delivered: $(cat "$W/a2.out")"
ok "3 pending messages, unacknowledged on A, came once on B (DUP) and never again"

# ---------------------------------------------------------------------------------------------
step="takeover across nodes"
k0="$(metric "$MURL_A" mica_push_broker_kicks_total)"
node_dev A "$REGID_D" TOKEN_D --count 1 --timeout 20000 >"$W/ka.out" 2>&1 &
kpid=$!
wait_line "$W/ka.out" '^suback 1$'
node_dev B "$REGID_D" TOKEN_D --count 0 >"$W/kb.out" 2>&1 || true
wait_line "$W/ka.out" '^closed$'
wait "$kpid" || true
k1="$(metric "$MURL_A" mica_push_broker_kicks_total)"
((k1 == k0 + 1)) || check_fail "kicks on A $k0 -> $k1"
ok "connecting on B closed the device's connection on A"

# ---------------------------------------------------------------------------------------------
step="subscription lost: queues re-read"
admin_redis() {
	REDISCLI_AUTH="$(<"$MICA_REDIS_ADMIN_PASSWORD_FILE")" redis-cli -s "$MICA_REDIS_SOCKET" \
		--user admin --no-auth-warning "$@"
}
rules="$(admin_redis ACL LIST | sed -n 's/^user push //p')"
[[ -n "$rules" ]] || fail "no ACL of the push user"
r0="$(metric "$MURL_A" mica_push_broker_resyncs_total)"
node_dev A "$REGID_E" TOKEN_E --count 1 --timeout 30000 >"$W/e.out" 2>&1 &
epid=$!
wait_line "$W/e.out" '^suback 1$'
# Taking the channel from the push user ends every push subscription (Redis 7) and refuses new
# ones: the message queued now has no wake, as in a Redis outage.
[[ "$(admin_redis ACL SETUSER push resetchannels)" == OK ]] || fail "ACL SETUSER resetchannels"
enqueue "$REGID_E" "$KEY_E" "queued while no broker listened"
# shellcheck disable=SC2086 # the rules are words
[[ "$(admin_redis ACL SETUSER push reset $rules)" == OK ]] || fail "restoring the push ACL"
wait "$epid" || true
[[ "$(ids "$W/e.out" "$REGID_E" "$KEY_E")" == "$MSG" ]] ||
	check_fail "not delivered after the resubscription: $(cat "$W/e.out")"
r1="$(metric "$MURL_A" mica_push_broker_resyncs_total)"
((r1 > r0)) || check_fail "resyncs on A $r0 -> $r1"
ok "after the subscription came back, A re-read the device's queue and delivered"

# ---------------------------------------------------------------------------------------------
step="max_connections"
o0="$(metric "$MURL_B" 'mica_push_broker_disconnects_total{reason="overload"}')"
node_dev B "$REGID_E" TOKEN_E --count 1 --timeout 20000 >"$W/o1.out" 2>&1 &
opid=$!
wait_line "$W/o1.out" '^suback 1$'
node_dev B "$REGID_D" TOKEN_D --count 0 >"$W/o2.out" 2>&1 || true
grep -q '^closed$' "$W/o2.out" || check_fail "a connection over max_connections: $(cat "$W/o2.out")"
o1="$(metric "$MURL_B" 'mica_push_broker_disconnects_total{reason="overload"}')"
((o1 == o0 + 1)) || check_fail "overload counted $o0 -> $o1"
enqueue "$REGID_E" "$KEY_E" "the first one is still served" wake
wait "$opid" || true
grep -q '^msg ' "$W/o1.out" || check_fail "the device within the limit: $(cat "$W/o1.out")"
ok "B (max_connections 1) closed the second connection and served the first"

# ---------------------------------------------------------------------------------------------
step="workers"
head -c 32 /dev/urandom >"$W/ticket.key"
chmod 600 "$W/ticket.key"
push_node C MICA_PUSH_BROKER_WORKERS=2 "MICA_PUSH_BROKER_TICKET_SECRET_FILE=$W/ticket.key" \
	MICA_PUSH_BROKER_HANDSHAKE_TIMEOUT_MS=1000
[[ "$(metric "$MURL_C" mica_push_broker_processes)" == 2 ]] || check_fail "processes: $(grep processes "$W/metrics")"
# Both processes listen before the devices come (the kernel spreads connections over the
# listeners by their addresses: 12 connections all on one of two listeners is a 1 in 2048 chance).
listeners() { [[ "$(ss -ltnpH "( sport = :$BPORT_C )" | grep -o 'pid=[0-9]*' | sort -u | wc -l)" == 2 ]]; }
mica_wait_for 10 listeners || check_fail "two processes do not listen on $BPORT_C: $(ss -ltnpH "( sport = :$BPORT_C )")"
pids=()
for i in $(seq 1 12); do
	broker_device "W$i"
	v="TOKEN_W$i" r="REGID_W$i"
	export "TOKEN_W$i"
	node_dev C "${!r}" "$v" --count 1 --timeout 30000 >"$W/w$i.out" 2>&1 &
	pids+=($!)
done
for i in $(seq 1 12); do wait_line "$W/w$i.out" '^suback 1$'; done
owners="$(ss -tnpH state established "( sport = :$BPORT_C )" | grep -o 'pid=[0-9]*' | sort -u | wc -l)"
((owners == 2)) || check_fail "12 connections held by $owners process(es), want 2: $(ss -tnpH state established "( sport = :$BPORT_C )")"
[[ "$(metric "$MURL_C" mica_push_broker_devices_online)" == 12 ]] ||
	check_fail "devices online summed over the workers: $(grep devices_online "$W/metrics")"
for i in $(seq 1 12); do
	r="REGID_W$i" k="KEY_W$i"
	enqueue "${!r}" "${!k}" "to worker device $i" wake
done
for p in "${pids[@]}"; do wait "$p" || true; done
for i in $(seq 1 12); do
	grep -q '^msg ' "$W/w$i.out" || check_fail "device W$i got nothing: $(cat "$W/w$i.out")"
done
# Sessions resume on either process: one full handshake, then resumptions only (-ign_eof: wait
# for the broker to close, 1 s without CONNECT, so the TLS 1.3 ticket is read).
openssl s_client -connect "127.0.0.1:$BPORT_C" -CAfile "$MICA_CA" -sess_out "$W/sess" -ign_eof \
	</dev/null >"$W/s0" 2>&1 || true
reused=0
for i in $(seq 1 8); do
	openssl s_client -connect "127.0.0.1:$BPORT_C" -CAfile "$MICA_CA" -sess_in "$W/sess" \
		-sess_out "$W/sess.new" -ign_eof </dev/null >"$W/s1" 2>&1 || true
	grep -q '^Reused' "$W/s1" && reused=$((reused + 1))
	[[ -s "$W/sess.new" ]] && mv "$W/sess.new" "$W/sess"
done
((reused == 8)) || check_fail "$reused of 8 reconnects resumed their TLS session"
ok "2 processes on one port both took connections, delivered, resumed each other's sessions"

stack_stop pushB
stack_stop pushC
stack_end
