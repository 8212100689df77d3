# shellcheck shell=bash disable=SC2154 # dir, ca, BUILD, LG and the sizes come from bench/push/run
# bench/push/mica.sh - the mica side of bench/push, sourced by bench/push/run (which provides
# $dir, $BUILD, $ca, the sizes and deploy/lib.sh). The stack is private to the run, in $dir:
# PostgreSQL in durable mode (fsync and synchronous_commit on: the queue's commit is the point
# of the comparison), Redis, a SoftHSM token, `mica migrate`, the Key Center with the development
# policy and the push keys, one app (`mica push app create`), and mica-push (developer API and
# broker). Devices are registered once through POST /v1/push/register (loadgen -M register);
# mica-push itself is restarted before every test, as mosquitto is, so each test measures a
# fresh broker. Server CPU counts every process of the stack (mica-push and its workers, the
# Key Center, PostgreSQL, Redis): what a message or a connect costs the whole service.

mica_side_available() { [[ -x "$BUILD/bin/mica-push" && -x "$BUILD/bin/mica-keycenter" && -f mipush/broker.c ]]; }

MICA_PKG=com.example.bench
ppid_push=""
kc_pid=""

kc_ready() { [[ "$(curl -sS --cacert "$ca" --cert "$dir/ca/push.pem" --key "$dir/ca/push.key" -o /dev/null -w '%{http_code}' "$kc_url/healthz")" == 200 ]]; }
push_gone() { ! mica_pid_alive "$ppid_push"; }
push_ready() { [[ "$(curl -sS --cacert "$ca" -o /dev/null -w '%{http_code}' "https://localhost:$push_http_port/healthz")" == 200 ]] && mica_port_in_use "$push_broker_port"; }

mica_side_cleanup() {
	if [[ -z "$ppid_push" && -s "$dir/push.pid" ]]; then ppid_push=$(<"$dir/push.pid"); fi
	mica_push_stop
	if [[ -n "$kc_pid" ]]; then
		kill "$kc_pid" 2>/dev/null || true
		wait "$kc_pid" 2>/dev/null || true
	fi
	(mica_redis_stop "$dir") >/dev/null 2>&1 || true
	(mica_pg_stop "$dir") >/dev/null 2>&1 || true
	(mica_pg_purge "$dir") >/dev/null 2>&1 || true
}

mica_side_setup() {
	local label=mica-push-bench admin_ci code k
	mica_ca_setup "$dir" "mica bench CA" push admin >/dev/null
	mica_pg_up "$dir" durable >/dev/null
	mica_redis_up "$dir" no push >/dev/null
	mica_hsm_up "$dir" "$label" >/dev/null
	admin_ci="host=127.0.0.1 port=$(mica_pg_port "$dir") dbname=mica user=mica passfile=$dir/secrets/pgpass sslmode=verify-full sslrootcert=$ca"
	MICA_DB_CONNINFO="$admin_ci" "$BUILD/bin/mica" migrate >"$dir/migrate.log" 2>&1 ||
		mica_die "mica migrate failed: $(tail -n 5 "$dir/migrate.log")"
	mica_pg_service_roles "$dir"
	"$BUILD/bin/mica" keycenter init --policy deploy/dev/keycenter-policy.json --force \
		--db "$admin_ci" --hsm-module "$MICA_HSM_MODULE" --token-label "$label" \
		--pin-file "$dir/secrets/hsm-user.pin" >"$dir/init.log" 2>&1 || mica_die "mica keycenter init failed"
	mica_free_port kc_port
	# shellcheck disable=SC2154 # kc_port is set by mica_free_port (printf -v)
	kc_url=https://localhost:$kc_port
	MICA_KEYCENTER_HTTP_PORT=$kc_port \
		MICA_KEYCENTER_HTTP_CERT_FILE=$dir/ca/server.pem \
		MICA_KEYCENTER_HTTP_KEY_FILE=$dir/ca/server.key \
		MICA_KEYCENTER_HTTP_CLIENT_CA_FILE=$ca \
		MICA_KEYCENTER_HTTP_ACCESS_LOG=false \
		MICA_KEYCENTER_HTTP_MAX_CONNECTIONS_PER_IP=0 \
		MICA_KEYCENTER_DB_CONNINFO="$(mica_keycenter_conninfo "$dir")" \
		MICA_KEYCENTER_DB_PASSWORD_FILE='' \
		MICA_KEYCENTER_HSM_MODULE="$MICA_HSM_MODULE" \
		MICA_KEYCENTER_HSM_TOKEN_LABEL=$label \
		MICA_KEYCENTER_HSM_PIN_FILE=$dir/secrets/hsm-user.pin \
		MICA_KEYCENTER_AUDIT_PUBLISH_FILE="$dir/published-checkpoints.jsonl" \
		MICA_LOG_LEVEL=warn \
		"$BUILD/bin/mica-keycenter" --config deploy/mica.conf.example >"$dir/keycenter.log" 2>&1 &
	kc_pid=$!
	mica_wait_for 60 kc_ready || mica_die "mica-keycenter did not become ready: $(tail -n 5 "$dir/keycenter.log")"
	for k in push-index push-content; do
		code=$(curl -sS --cacert "$ca" --cert "$dir/ca/admin.pem" --key "$dir/ca/admin.key" \
			-o "$dir/key.json" -w '%{http_code}' -H 'Content-Type: application/json' \
			-d '{"owner":"push"}' "$kc_url/v1/keys/$k")
		[[ "$code" == 201 ]] || mica_die "creating key $k: HTTP $code $(cat "$dir/key.json")"
	done
	"$BUILD/bin/mica" push app create --package "$MICA_PKG" --db "$admin_ci" --kc-url "$kc_url" \
		--ca "$ca" --cert "$dir/ca/push.pem" --key "$dir/ca/push.key" >"$dir/app.out" 2>"$dir/app.err" ||
		mica_die "mica push app create failed: $(cat "$dir/app.err")"
	mica_app_id=$(sed -n 's/^app_id: //p' "$dir/app.out")
	(umask 077 && sed -n 's/^app_secret: //p' "$dir/app.out" >"$dir/app.secret")
	rm -f "$dir/app.out"
	head -c 32 /dev/urandom >"$dir/ticket.secret"
	chmod 0600 "$dir/ticket.secret"
	mica_free_port push_http_port
	mica_free_port push_broker_port

	# The devices, registered once: the idle/storm set, the rate set after it, and the box.
	local need=$((N_IDLE + N_RATE)) t0=$SECONDS
	if ((N_BOX > need)); then need=$N_BOX; fi
	mica_push_start 1
	# shellcheck disable=SC2154 # push_http_port is set by mica_free_port (printf -v)
	"$BUILD/bench/loadgen" -M register -n "$need" -a "$ca" -p "$push_http_port" -H 8 \
		-I "$mica_app_id" -g "$MICA_PKG" -D "$dir/devices" 2>>"$dir/loadgen.log" ||
		mica_die "registering $need devices failed: $(tail -n 3 "$dir/loadgen.log")"
	mica_push_stop
	sed -n "$((N_IDLE + 1)),$((N_IDLE + N_RATE))p" "$dir/devices" >"$dir/devices.rate"
	mica_log "mica side ready: $need devices registered in $((SECONDS - t0)) s"
}

# mica_push_start WORKERS: a fresh mica-push (API + broker with WORKERS processes).
mica_push_start() {
	# shellcheck disable=SC2154 # set by mica_free_port (printf -v)
	env MICA_LOG_LEVEL=warn \
		"MICA_PUSH_HTTP_PORT=$push_http_port" \
		MICA_PUSH_HTTP_METRICS_PORT=0 \
		MICA_PUSH_HTTP_ACCESS_LOG=false \
		MICA_PUSH_HTTP_MAX_CONNECTIONS_PER_IP=0 \
		"MICA_PUSH_HTTP_CERT_FILE=$dir/ca/server.pem" \
		"MICA_PUSH_HTTP_KEY_FILE=$dir/ca/server.key" \
		"MICA_PUSH_DB_CONNINFO=$(mica_service_conninfo "$dir" push)" \
		MICA_PUSH_DB_PASSWORD_FILE= \
		"MICA_PUSH_REDIS_SOCKET=$dir/redis/redis.sock" \
		MICA_PUSH_REDIS_USER=push \
		"MICA_PUSH_REDIS_PASSWORD_FILE=$dir/secrets/redis-push.password" \
		"MICA_PUSH_KEYCENTER_URL=$kc_url" \
		"MICA_PUSH_KEYCENTER_CA_FILE=$ca" \
		"MICA_PUSH_KEYCENTER_CERT_FILE=$dir/ca/push.pem" \
		"MICA_PUSH_KEYCENTER_KEY_FILE=$dir/ca/push.key" \
		MICA_PUSH_BROKER_BIND=127.0.0.1 \
		"MICA_PUSH_BROKER_PORT=$push_broker_port" \
		"MICA_PUSH_BROKER_CERT_FILE=$dir/ca/server.pem" \
		"MICA_PUSH_BROKER_KEY_FILE=$dir/ca/server.key" \
		"MICA_PUSH_BROKER_TICKET_SECRET_FILE=$dir/ticket.secret" \
		"MICA_PUSH_BROKER_WORKERS=$1" \
		MICA_PUSH_BROKER_INFLIGHT=20 \
		MICA_PUSH_BROKER_MAX_CONNECTIONS=19950 \
		MICA_PUSH_HTTP_MAX_CONNECTIONS=16 \
		MICA_PUSH_HTTP_BLOCKING_THREADS=8 \
		MICA_PUSH_REGISTER_IP_MAX=1000000 \
		MICA_PUSH_REGISTER_DEVICE_MAX=1000000 \
		"$BUILD/bin/mica-push" --config deploy/mica.conf.example >>"$dir/push.log" 2>&1 &
	ppid_push=$!
	# The tests run in command substitutions (subshells): the pid file lets the cleanup of an
	# interrupted run find a mica-push that its parent never saw.
	echo "$ppid_push" >"$dir/push.pid"
	mica_wait_for 60 push_ready || mica_die "mica-push did not become ready: $(tail -n 5 "$dir/push.log")"
}

mica_push_stop() {
	[[ -n "$ppid_push" ]] || return 0
	kill -TERM "$ppid_push" 2>/dev/null || true
	wait "$ppid_push" 2>/dev/null || mica_wait_for 30 push_gone || true
	ppid_push=""
	rm -f "$dir/push.pid"
}

# mica_push_pids: mica-push and its broker workers, comma separated.
mica_push_pids() {
	local p=$ppid_push c
	for c in $(pgrep -P "$ppid_push" 2>/dev/null || true); do p+=",$c"; done
	printf '%s' "$p"
}
# mica_stack_pids: every server process of the stack (CPU accounting).
mica_stack_pids() {
	local p pm
	p="$(mica_push_pids),$kc_pid"
	pm=$(head -n 1 "$(mica__pg_dir "$dir")/data/postmaster.pid" 2>/dev/null || true)
	# +: the postmaster and its children when the CPU is read (backends open as the load needs them)
	[[ "$pm" =~ ^[0-9]+$ ]] && p+=",+$pm"
	pm=$(mica_redis_pid "$dir" 2>/dev/null || true)
	[[ "$pm" =~ ^[0-9]+$ ]] && p+=",$pm"
	printf '%s' "$p"
}

mica_storm() {
	mica_push_start 1
	# shellcheck disable=SC2154 # push_broker_port is set by mica_free_port (printf -v)
	"${LG[@]}" -M storm -D "$dir/devices" -n "$N_IDLE" -p "$push_broker_port" -P "$ppid_push" \
		-U "$(mica_stack_pids)" 2>>"$dir/loadgen.log" || true
	mica_push_stop
}

mica_rate() {
	mica_push_start 1
	"${LG[@]}" -M rate -D "$dir/devices.rate" -n "$N_RATE" -R "$RATE_ROUNDS" -l "$PAYLOAD" \
		-S "http:$push_http_port" -A "$dir/app.secret" -g "$MICA_PKG" -B "$BATCH" -H "$HCONNS" \
		-p "$push_broker_port" -o 100000 -U "$(mica_stack_pids)" 2>>"$dir/loadgen.log" || true
	mica_push_stop
}

# mica_box: N_BOX devices on one box, $WORKERS broker processes, one loadgen per 19,900 devices.
# Each loadgen holds its devices until killed; the figure is taken when every one of them has
# reported its devices connected, so they were all held at the same time.
mica_box() {
	local per=19900 k i n held=0 failed=0 out p deadline
	local -a lpids=()
	k=$(((N_BOX + per - 1) / per))
	mica_push_start "$WORKERS"
	for ((i = 0; i < k; i++)); do
		n=$((N_BOX - i * per))
		((n > per)) && n=$per
		sed -n "$((i * per + 1)),$((i * per + n))p" "$dir/devices" >"$dir/devices.box$i"
		"${LG[@]}" -M hold -D "$dir/devices.box$i" -n "$n" -o $((200000 + i * per)) \
			-p "$push_broker_port" -s 2 -t 3600 >"$dir/box$i.out" 2>>"$dir/loadgen.log" &
		lpids+=($!)
	done
	deadline=$((SECONDS + 900))
	for ((i = 0; i < k; i++)); do
		until grep -q '^mode=hold devices=' "$dir/box$i.out" 2>/dev/null; do
			if ((SECONDS > deadline)) || ! mica_pid_alive "${lpids[$i]}"; then break; fi
			sleep 1
		done
	done
	for ((i = 0; i < k; i++)); do
		out=$(grep '^mode=hold devices=' "$dir/box$i.out" || true)
		held=$((held + $(kv "$out" ready || echo 0)))
		failed=$((failed + $(kv "$out" failed || echo 0)))
	done
	local alive=0
	for p in $(mica_push_pids | tr ',' ' '); do mica_pid_alive "$p" && alive=$((alive + 1)); done
	for p in "${lpids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${lpids[@]}"; do wait "$p" 2>/dev/null || true; done
	echo "bench/push: box: mica-push held $held of $N_BOX devices at once ($failed failed) over" \
		"$alive broker processes (push.broker.workers = $WORKERS, SO_REUSEPORT) from $k loadgen processes" \
		"(target >= 80000: $( ((held >= 80000)) && echo met || echo MISSED)); mosquitto is one process," \
		"its ceiling is the descriptor limit ($(ulimit -n)): the 'held' line above"
	mica_push_stop
}
