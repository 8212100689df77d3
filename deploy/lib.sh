#!/usr/bin/env bash
# Shared pieces of the local stack for deploy/dev-up (DIR = var/) and tests/run (DIR = a temporary
# directory): free loopback ports, a development CA, a private PostgreSQL cluster with TLS, Redis
# with per-service ACL users, a SoftHSM2 token. Every function takes DIR, so stacks can run side
# by side. Sourced for the functions; executed as `lib.sh pg-restart|redis-restart DIR`.

# Layout of DIR:
#   ca/       ca.pem ca.key, server.pem server.key, <principal>.pem/.key (client certs),
#             rogue-ca.pem rogue-ca.key rogue.pem rogue.key (a second, untrusted CA)
#   secrets/  0700; 0600 files: pg.password, pgpass, redis-<user>.password, hsm-user.pin, hsm-so.pin
#   pg/       data/ (the cluster), run/ (Unix socket), server.crt/.key (copies for the server),
#             postgresql.log, port; owned by the postgres system user when we run as root (a
#             symlink to /var/lib/mica-dev/<hash>/pg if that user cannot enter DIR)
#   redis/    redis.conf users.acl redis.sock redis.pid redis.log data/ port
#   hsm/      softhsm2.conf tokens/

MICA_SERVICES="${MICA_SERVICES:-keycenter account push cloudsync}"
MICA_HSM_MODULE="${MICA_HSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
MICA_HSM_TOKEN_LABEL="${MICA_HSM_TOKEN_LABEL:-mica-keycenter}"
MICA_LIB_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# Ports handed out by mica_free_port in this process, so two calls never return the same one
# before the first is bound.
MICA__TAKEN_PORTS=" "

mica_log() { printf '%s: %s\n' "${MICA_LOG_PREFIX:-mica}" "$*"; }
mica_die() {
	printf '%s: error: %s\n' "${MICA_LOG_PREFIX:-mica}" "$*" >&2
	exit 1
}

# ---------------------------------------------------------------------------------------------
# Small helpers

# mica_shq VALUE: VALUE single-quoted for a shell (for generated env files and commands).
mica_shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# mica_env_name NAME: NAME as an environment-variable suffix (upper case, [A-Z0-9_]).
mica_env_name() {
	local n="${1^^}"
	printf '%s' "${n//[^A-Z0-9_]/_}"
}

# mica_secret_file PATH: create PATH (0600, 64 hex chars, no newline) unless it exists.
mica_secret_file() {
	[[ -s "$1" ]] && return 0
	(umask 077 && openssl rand -hex 32 | tr -d '\n' >"$1.tmp" && mv "$1.tmp" "$1")
}

# mica_wait_for SECONDS CMD...: run CMD every 0.2 s until it succeeds; 1 on timeout.
mica_wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

# mica_pid_alive PID: PID is a live process (a zombie waiting to be reaped does not count).
mica_pid_alive() {
	local stat
	[[ "$1" =~ ^[0-9]+$ ]] && stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[[ "${stat:0:1}" != Z ]]
}

# mica_check_socket_path PATH: Unix socket paths are limited to 107 bytes.
mica_check_socket_path() {
	((${#1} <= 100)) || mica_die "socket path too long (${#1} > 100 bytes): $1; use a shorter directory"
}

# mica_port_in_use PORT: true if something listens on PORT (any address, TCP).
mica_port_in_use() {
	if command -v ss >/dev/null 2>&1; then
		local out
		out="$(ss -Hltn "sport = :$1" 2>/dev/null)" || return 0
		[[ -n "$out" ]]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# mica_free_port VAR: store in VAR a TCP port nothing listens on, below the kernel's ephemeral
# range (so outgoing connections cannot take it between now and bind) and not handed out before
# by this process.
mica_free_port() {
	local _lo=20000 _hi=32767 _eph_lo _eph_hi _p _i
	if read -r _eph_lo _eph_hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
		if ((_eph_lo > _lo + 1000)); then
			_hi=$((_eph_lo - 1))
		elif ((_eph_hi < 64000)); then
			_lo=$((_eph_hi + 1)) _hi=65535
		fi
	fi
	for ((_i = 0; _i < 200; _i++)); do
		_p=$((_lo + (RANDOM * 32768 + RANDOM) % (_hi - _lo + 1)))
		[[ "$MICA__TAKEN_PORTS" == *" $_p "* ]] && continue
		mica_port_in_use "$_p" && continue
		MICA__TAKEN_PORTS+="$_p "
		printf -v "$1" '%s' "$_p"
		return 0
	done
	mica_die "no free TCP port found in $_lo-$_hi"
}

# mica_stored_port FILE VAR: reuse the port recorded in FILE when it is free, else pick a new
# one and record it. Used for services that are not running yet.
mica_stored_port() {
	local _sp=""
	[[ -s "$1" ]] && _sp="$(<"$1")"
	if [[ ! "$_sp" =~ ^[0-9]+$ ]] || mica_port_in_use "$_sp"; then
		mica_free_port _sp
	fi
	MICA__TAKEN_PORTS+="$_sp "
	printf '%s\n' "$_sp" >"$1"
	printf -v "$2" '%s' "$_sp"
}

# ---------------------------------------------------------------------------------------------
# Development CA

mica__genkey() { (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null); }

# mica__issue CA_PREFIX OUT_PREFIX SUBJECT EXTENSIONS: key OUT.key + cert OUT.pem signed by CA.
mica__issue() {
	local ca="$1" out="$2" subj="$3" ext="$4"
	[[ -s "$out.key" ]] || mica__genkey "$out.key"
	openssl req -new -key "$out.key" -subj "$subj" |
		openssl x509 -req -CA "$ca.pem" -CAkey "$ca.key" -days 825 -sha256 \
			-set_serial "0x$(openssl rand -hex 16)" -extfile <(printf '%s\n' "$ext") \
			-out "$out.pem.tmp" 2>/dev/null
	mv "$out.pem.tmp" "$out.pem"
}

# mica__cert_ok PREFIX: certificate and key exist and the certificate is valid for another day.
mica__cert_ok() { [[ -s "$1.pem" && -s "$1.key" ]] && openssl x509 -in "$1.pem" -noout -checkend 86400 >/dev/null 2>&1; }

mica__make_ca() {
	local prefix="$1" cn="$2"
	mica__cert_ok "$prefix" && return 0
	mica__genkey "$prefix.key"
	openssl req -x509 -new -key "$prefix.key" -subj "/O=mica/CN=$cn" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$prefix.pem"
}

# mica_ca_setup DIR CA_NAME PRINCIPAL...: make (or keep) DIR/ca with the CA, the server
# certificate (CN=localhost; SAN DNS:localhost, IP:127.0.0.1, IP:::1), one client certificate per
# principal (CN = principal, extendedKeyUsage clientAuth), and the rogue CA with its client
# certificate rogue.pem, whose CN is "admin": it claims a real identity, so a test that accepts it
# proves the trust check, not the name check, is missing. Existing files are kept; leaf
# certificates are reissued when they expire within a day.
mica_ca_setup() {
	local dir="$1/ca" name="$2" p
	shift 2
	mkdir -p "$dir"
	chmod 0755 "$dir"
	mica__make_ca "$dir/ca" "$name"
	mica__make_ca "$dir/rogue-ca" "$name (rogue, untrusted)"
	local leaf="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
	mica__cert_ok "$dir/server" || mica__issue "$dir/ca" "$dir/server" "/O=mica/CN=localhost" \
		"$leaf
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
	for p in "$@"; do
		[[ "$p" =~ ^[a-z0-9][a-z0-9_-]*$ ]] || mica_die "bad principal name: $p"
		mica__cert_ok "$dir/$p" || mica__issue "$dir/ca" "$dir/$p" "/O=mica/CN=$p" \
			"$leaf
extendedKeyUsage=clientAuth"
	done
	mica__cert_ok "$dir/rogue" || mica__issue "$dir/rogue-ca" "$dir/rogue" "/O=mica/CN=admin" \
		"$leaf
extendedKeyUsage=clientAuth"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# mica__pg_bindir: the PostgreSQL server binaries (MICA_PG_BINDIR, else Debian's newest, else PATH).
mica__pg_bindir() {
	if [[ -n "${MICA_PG_BINDIR:-}" ]]; then
		printf '%s' "$MICA_PG_BINDIR"
		return
	fi
	local d best=""
	for d in /usr/lib/postgresql/*/bin; do
		[[ -x "$d/initdb" ]] && best="$d"
	done
	[[ -z "$best" && -x /usr/lib/postgresql/15/bin/initdb ]] && best=/usr/lib/postgresql/15/bin
	if [[ -z "$best" ]]; then
		best="$(command -v initdb 2>/dev/null)" || mica_die "PostgreSQL server binaries not found (run deploy/install-deps)"
		best="$(dirname "$best")"
	fi
	printf '%s' "$best"
}

# mica__pg_user: the system user the server runs as: postgres when we are root, else ourselves.
mica__pg_user() { if ((EUID == 0)); then printf postgres; else id -un; fi; }

# mica__as_pg PGDIR CMD...: run CMD as the server's user, in PGDIR (the user may not be allowed to
# enter our working directory).
mica__as_pg() {
	local pgdir="$1"
	shift
	if ((EUID == 0)); then
		(cd "$pgdir" && runuser -u postgres -- "$@")
	else
		(cd "$pgdir" && "$@")
	fi
}

# mica__pg_dir DIR: where the cluster of DIR lives: DIR/pg, or the target of the symlink DIR/pg
# that mica__pg_place made. Paths given to the server are always this resolved one.
mica__pg_dir() {
	if [[ -L "$1/pg" ]]; then readlink -f "$1/pg"; else printf '%s' "$1/pg"; fi
}

# mica__pg_place DIR: as root, the postgres user must be able to enter DIR/pg. When a parent
# forbids it (a checkout under /root, say), the cluster goes to /var/lib/mica-dev/<hash of DIR>/pg
# instead and DIR/pg becomes a symlink to it, so nothing outside DIR changes permissions.
mica__pg_place() {
	local dir="$1" home
	((EUID == 0)) || return 0
	id postgres >/dev/null 2>&1 || mica_die "system user postgres missing (run deploy/install-deps)"
	[[ -e "$dir/pg" ]] && return 0
	runuser -u postgres -- test -x "$dir" && return 0
	home="/var/lib/mica-dev/$(printf '%s' "$dir" | sha256sum | cut -c1-16)"
	mkdir -p "$home/pg"
	chmod 0711 /var/lib/mica-dev "$home"
	runuser -u postgres -- test -x "$home" || mica_die "the postgres user cannot enter $home"
	ln -s "$home/pg" "$dir/pg"
	mica_log "postgresql: the postgres user cannot enter $dir; cluster placed in $home/pg"
}

mica_pg_running() {
	local pg
	pg="$(mica__pg_dir "$1")"
	[[ -f "$pg/data/PG_VERSION" ]] || return 1
	mica__as_pg "$pg" "$(mica__pg_bindir)/pg_ctl" -D "$pg/data" status >/dev/null 2>&1
}

mica_pg_port() { cat "$(mica__pg_dir "$1")/port"; }

mica__pg_init() {
	local dir="$1" pg bin user
	pg="$(mica__pg_dir "$1")"
	bin="$(mica__pg_bindir)"
	user="$(mica__pg_user)"
	mica_secret_file "$dir/secrets/pg.password"
	rm -rf "$pg/data"
	# initdb reads the password from a file the server's user can open; it lives only for initdb.
	install -m 0600 -o "$user" /dev/null "$pg/initdb.pw"
	cat "$dir/secrets/pg.password" >"$pg/initdb.pw"
	if ! mica__as_pg "$pg" "$bin/initdb" -D "$pg/data" -U mica --pwfile="$pg/initdb.pw" \
		--auth=scram-sha-256 -E UTF8 --locale=C --data-checksums >"$pg/initdb.log" 2>&1; then
		rm -f "$pg/initdb.pw"
		cat "$pg/initdb.log" >&2
		mica_die "initdb failed"
	fi
	rm -f "$pg/initdb.pw"
	# Only TLS over TCP, only SCRAM; the socket (inside DIR, mode 0700) also needs the password.
	cat >"$pg/data/pg_hba.conf" <<'EOF'
# mica: generated by deploy/lib.sh. TCP must use TLS (there is no "host" line, so plaintext
# connections are refused); every connection authenticates with SCRAM-SHA-256.
# TYPE   DATABASE  USER  ADDRESS        METHOD
local    all       all                  scram-sha-256
hostssl  all       all   127.0.0.1/32   scram-sha-256
EOF
	printf "\n# mica: settings generated at every start\ninclude_if_exists = 'mica.conf'\n" >>"$pg/data/postgresql.conf"
	chown "$user" "$pg/data/pg_hba.conf" "$pg/data/postgresql.conf"
}

# mica__pg_config DIR MODE: write data/mica.conf (port, socket, TLS; MODE fast turns off fsync
# and synchronous_commit, for throwaway test clusters only) and install the server key.
mica__pg_config() {
	local dir="$1" mode="$2" pg user port
	pg="$(mica__pg_dir "$1")"
	user="$(mica__pg_user)"
	port="$(mica_pg_port "$dir")"
	install -m 0644 -o "$user" "$dir/ca/server.pem" "$pg/server.crt"
	install -m 0600 -o "$user" "$dir/ca/server.key" "$pg/server.key"
	{
		echo "# mica: generated by deploy/lib.sh at every start; edits are lost."
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$pg/run'"
		echo "unix_socket_permissions = 0700"
		echo "ssl = on"
		echo "ssl_cert_file = '$pg/server.crt'"
		echo "ssl_key_file = '$pg/server.key'"
		echo "ssl_min_protocol_version = 'TLSv1.2'"
		echo "password_encryption = 'scram-sha-256'"
		echo "max_connections = 200"
		echo "log_line_prefix = '%m [%p] %q%u@%d '"
		if [[ "$mode" == fast ]]; then
			echo "# throwaway test cluster: durability traded for speed"
			echo "fsync = off"
			echo "synchronous_commit = off"
			echo "full_page_writes = off"
		fi
	} >"$pg/data/mica.conf"
	chown "$user" "$pg/data/mica.conf"
}

mica__pg_start() {
	local dir="$1" pg bin
	pg="$(mica__pg_dir "$1")"
	bin="$(mica__pg_bindir)"
	if ! mica__as_pg "$pg" "$bin/pg_ctl" -D "$pg/data" -l "$pg/postgresql.log" -w -t 60 start >/dev/null; then
		tail -n 20 "$pg/postgresql.log" >&2 || true
		mica_die "PostgreSQL did not start (log: $pg/postgresql.log)"
	fi
	mica__pg_wait "$dir"
}

mica__pg_wait() {
	local pg port
	pg="$(mica__pg_dir "$1")"
	port="$(mica_pg_port "$1")"
	mica_wait_for 60 pg_isready -q -h "$pg/run" -p "$port" ||
		mica_die "PostgreSQL is not accepting connections (log: $pg/postgresql.log)"
}

# mica_pg_psql DIR ARGS...: psql as the superuser mica over the Unix socket.
mica_pg_psql() {
	local dir="$1"
	shift
	psql -X "host=$(mica__pg_dir "$dir")/run port=$(mica_pg_port "$dir") user=mica dbname=${MICA__PG_DB:-mica} passfile=$dir/secrets/pgpass" "$@"
}

# mica_pg_up DIR [durable|fast]: create the cluster if needed (superuser mica with a random
# password, database mica), start it unless it runs, and ensure the database exists.
mica_pg_up() {
	local dir="$1" mode="${2:-durable}" pg user port
	user="$(mica__pg_user)"
	mica__pg_place "$dir"
	pg="$(mica__pg_dir "$dir")"
	mkdir -p "$dir/secrets" "$pg"
	chmod 0700 "$dir/secrets"
	if mica_pg_running "$dir"; then
		mica_log "postgresql: already running on 127.0.0.1:$(mica_pg_port "$dir") (data $pg/data)"
		return 0
	fi
	mkdir -p "$pg/run"
	chown "$user" "$pg" "$pg/run"
	chmod 0700 "$pg" "$pg/run"
	mica_check_socket_path "$pg/run/.s.PGSQL.65535"
	[[ -f "$pg/data/PG_VERSION" ]] || mica__pg_init "$dir"
	mica_stored_port "$pg/port" port
	(umask 077 && printf '*:*:*:mica:%s\n' "$(<"$dir/secrets/pg.password")" >"$dir/secrets/pgpass")
	mica__pg_config "$dir" "$mode"
	mica__pg_start "$dir"
	local have
	have="$(MICA__PG_DB=postgres mica_pg_psql "$dir" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'mica'")" ||
		mica_die "cannot connect to PostgreSQL as mica (log: $pg/postgresql.log)"
	if [[ "$have" != 1 ]]; then
		MICA__PG_DB=postgres mica_pg_psql "$dir" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE mica" >/dev/null ||
			mica_die "could not create database mica"
	fi
	mica_log "postgresql: started on 127.0.0.1:$port (data $pg/data)"
}

# mica_pg_stop DIR: fast shutdown; immediate if that fails. Safe when nothing runs.
mica_pg_stop() {
	local dir="$1" pg bin
	pg="$(mica__pg_dir "$1")"
	mica_pg_running "$dir" || return 0
	bin="$(mica__pg_bindir)"
	mica__as_pg "$pg" "$bin/pg_ctl" -D "$pg/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
		mica__as_pg "$pg" "$bin/pg_ctl" -D "$pg/data" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
		mica_die "could not stop PostgreSQL in $pg/data"
}

# mica_pg_restart DIR: fast restart (stop -m fast, start), then wait until pg_isready says yes.
# Stop-then-start rather than `pg_ctl restart`, which cannot keep the server's output in the log
# file and would leave it holding the caller's stdout.
mica_pg_restart() {
	local dir="$1" pg bin
	pg="$(mica__pg_dir "$1")"
	bin="$(mica__pg_bindir)"
	mica_pg_running "$dir" || mica_die "PostgreSQL in $pg/data is not running"
	mica__as_pg "$pg" "$bin/pg_ctl" -D "$pg/data" -m fast -w -t 60 stop >/dev/null ||
		mica_die "could not stop PostgreSQL in $pg/data"
	mica__pg_start "$dir"
}

# mica_pg_purge DIR: remove the cluster's files when they live outside DIR (see mica__pg_place);
# the caller removes DIR itself. Stop the server first.
mica_pg_purge() {
	local pg
	[[ -L "$1/pg" ]] || return 0
	pg="$(mica__pg_dir "$1")"
	if [[ "$pg" == /var/lib/mica-dev/*/pg ]]; then
		rm -rf "$(dirname "$pg")"
		rmdir /var/lib/mica-dev 2>/dev/null || true
	fi
	rm -f "$1/pg"
}

# ---------------------------------------------------------------------------------------------
# Redis

mica_redis_pid() {
	local pidfile="$1/redis/redis.pid" pid
	[[ -s "$pidfile" ]] || return 1
	pid="$(<"$pidfile")"
	mica_pid_alive "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]] || return 1
	printf '%s' "$pid"
}

mica_redis_running() { mica_redis_pid "$1" >/dev/null; }

# mica_redis_cli DIR USER ARGS...: redis-cli over the Unix socket as USER (password from its file,
# passed through the environment, not the command line).
mica_redis_cli() {
	local dir="$1" user="$2"
	shift 2
	REDISCLI_AUTH="$(<"$dir/secrets/redis-$user.password")" \
		redis-cli --no-auth-warning -s "$dir/redis/redis.sock" --user "$user" "$@"
}

mica__redis_ping() { [[ "$(mica_redis_cli "$1" admin PING 2>/dev/null)" == PONG ]]; }

# mica__redis_acl DIR USER...: write users.acl: default user off, admin with everything, and one
# user per name restricted to keys and channels "<name>:*" and to non-dangerous commands (no
# KEYS, FLUSHDB, CONFIG, INFO, SORT, ...). Only SHA-256 hashes of the passwords are written.
# The session cache "session:*" (lib/auth.h) is written only by account; every other user may
# only read it (%R~, Redis 7), except test, which may also write it so tests can seed sessions.
# Every user may also subscribe to "__redis__:invalidate", where Redis client tracking delivers
# the invalidations lib/kvcache applies (CLIENT TRACKING itself is not in @dangerous).
mica__redis_acl() {
	local dir="$1" u pw hash session
	shift
	{
		echo "user default off resetkeys resetchannels nopass -@all"
		for u in admin "$@"; do
			mica_secret_file "$dir/secrets/redis-$u.password"
			pw="$(<"$dir/secrets/redis-$u.password")"
			hash="$(printf '%s' "$pw" | sha256sum)"
			hash="${hash%% *}"
			if [[ "$u" == admin ]]; then
				echo "user admin on resetpass #$hash ~* &* +@all"
			else
				session="%R~session:*"
				[[ "$u" == account || "$u" == test ]] && session="~session:*"
				echo "user $u on resetpass #$hash resetkeys ~$u:* $session resetchannels &$u:* &__redis__:invalidate +@all -@dangerous"
			fi
		done
	} >"$dir/redis/users.acl.tmp"
	chmod 0600 "$dir/redis/users.acl.tmp"
	mv "$dir/redis/users.acl.tmp" "$dir/redis/users.acl"
}

mica__redis_config() {
	local dir="$1" appendonly="$2" port="$3" r="$1/redis"
	cat >"$r/redis.conf" <<EOF
# mica: generated by deploy/lib.sh at every start; edits are lost.
# No plaintext TCP: TLS on 127.0.0.1 for tools, and a Unix socket for the daemons (hiredis 0.14
# has no TLS). Users and their key prefixes are in users.acl.
port 0
bind 127.0.0.1
tls-port $port
tls-cert-file $dir/ca/server.pem
tls-key-file $dir/ca/server.key
tls-ca-cert-file $dir/ca/ca.pem
tls-auth-clients optional
unixsocket $r/redis.sock
unixsocketperm 700
daemonize yes
pidfile $r/redis.pid
logfile $r/redis.log
dir $r/data
aclfile $r/users.acl
save ""
appendonly $appendonly
appendfsync everysec
EOF
}

mica__redis_start() {
	local dir="$1" r="$1/redis"
	rm -f "$r/redis.pid"
	redis-server "$r/redis.conf" || mica_die "redis-server refused its configuration ($r/redis.conf)"
	if ! mica_wait_for 30 mica__redis_ping "$dir"; then
		tail -n 20 "$r/redis.log" >&2 || true
		mica_die "Redis does not answer on $r/redis.sock (log: $r/redis.log)"
	fi
}

# mica_redis_up DIR APPENDONLY USER...: configure and start Redis unless it runs (then only reload
# the ACL file, so new users appear). APPENDONLY is yes or no.
mica_redis_up() {
	local dir="$1" appendonly="$2" r="$1/redis" port
	shift 2
	mkdir -p "$r/data" "$dir/secrets"
	chmod 0700 "$r" "$dir/secrets"
	mica_check_socket_path "$r/redis.sock"
	mica__redis_acl "$dir" "$@"
	if mica_redis_running "$dir"; then
		mica_redis_cli "$dir" admin ACL LOAD >/dev/null || mica_die "Redis ACL LOAD failed"
		mica_log "redis: already running (tls 127.0.0.1:$(<"$r/port"), socket $r/redis.sock)"
		return 0
	fi
	mica_stored_port "$r/port" port
	mica__redis_config "$dir" "$appendonly" "$port"
	mica__redis_start "$dir"
	mica_log "redis: started (tls 127.0.0.1:$port, socket $r/redis.sock)"
}

# mica_redis_stop DIR: SIGTERM (Redis flushes the append-only file and removes its socket), wait;
# SIGKILL after 30 s. Safe when nothing runs.
mica_redis_stop() {
	local pid
	pid="$(mica_redis_pid "$1")" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	if ! mica_wait_for 30 eval "! mica_pid_alive $pid"; then
		kill -KILL "$pid" 2>/dev/null || true
		mica_wait_for 5 eval "! mica_pid_alive $pid" || true
	fi
}

# mica_redis_restart DIR: stop and start again with the same configuration (same socket and
# port), waiting until it answers PING.
mica_redis_restart() {
	mica_redis_running "$1" || mica_die "Redis in $1/redis is not running"
	mica_redis_stop "$1"
	mica__redis_start "$1"
}

# ---------------------------------------------------------------------------------------------
# SoftHSM2

# mica__hsm_has_token LABEL: a token with exactly this label exists (under SOFTHSM2_CONF).
mica__hsm_has_token() {
	local slots
	slots="$(softhsm2-util --show-slots 2>/dev/null)" || return 1
	slots+=$'\n'
	[[ "$slots" =~ Label:[[:space:]]+"$1"[[:space:]]*$'\n' ]]
}

# mica_hsm_up DIR LABEL: write DIR/hsm/softhsm2.conf (tokens inside DIR), export SOFTHSM2_CONF,
# and initialise a token labelled LABEL in a free slot unless one exists, with random SO and user
# PINs in 0600 files. Tokens are always found by label; slot numbers change.
mica_hsm_up() {
	local dir="$1" label="$2" h="$1/hsm"
	mkdir -p "$h/tokens" "$dir/secrets"
	chmod 0700 "$h" "$h/tokens" "$dir/secrets"
	cat >"$h/softhsm2.conf" <<EOF
# mica: generated by deploy/lib.sh
directories.tokendir = $h/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
	export SOFTHSM2_CONF="$h/softhsm2.conf"
	if mica__hsm_has_token "$label"; then
		[[ -s "$dir/secrets/hsm-user.pin" ]] || mica_die "token $label exists but $dir/secrets/hsm-user.pin is missing"
		mica_log "softhsm: token '$label' present ($h/tokens)"
		return 0
	fi
	mica_secret_file "$dir/secrets/hsm-so.pin"
	mica_secret_file "$dir/secrets/hsm-user.pin"
	softhsm2-util --init-token --free --label "$label" \
		--so-pin "$(<"$dir/secrets/hsm-so.pin")" --pin "$(<"$dir/secrets/hsm-user.pin")" >/dev/null ||
		mica_die "softhsm2-util could not initialise token $label"
	mica__hsm_has_token "$label" || mica_die "token $label not found after initialisation"
	mica_log "softhsm: token '$label' initialised ($h/tokens)"
}

# ---------------------------------------------------------------------------------------------
# Environment

# mica_env_lines DIR PRINCIPAL...: `export X=...` lines describing the stack in DIR (the
# variables of docs/testing.md that do not depend on the caller). Principals listed get
# MICA_CERT_<P>/MICA_KEY_<P>; every service in MICA_SERVICES gets MICA_REDIS_PASSWORD_FILE_<S>.
mica_env_lines() {
	local dir="$1" p s v pgport pg
	shift
	pg="$(mica__pg_dir "$dir")"
	pgport="$(mica_pg_port "$dir")"
	mica__e() { printf 'export %s=%s\n' "$1" "$(mica_shq "$2")"; }
	mica__e MICA_SERVICES "$MICA_SERVICES"
	mica__e MICA_CA "$dir/ca/ca.pem"
	mica__e MICA_CERT_SERVER "$dir/ca/server.pem"
	mica__e MICA_KEY_SERVER "$dir/ca/server.key"
	for p in "$@"; do
		v="$(mica_env_name "$p")"
		mica__e "MICA_CERT_$v" "$dir/ca/$p.pem"
		mica__e "MICA_KEY_$v" "$dir/ca/$p.key"
	done
	mica__e MICA_CA_ROGUE "$dir/ca/rogue-ca.pem"
	mica__e MICA_CERT_ROGUE "$dir/ca/rogue.pem"
	mica__e MICA_KEY_ROGUE "$dir/ca/rogue.key"
	mica__e MICA_PG_HOST 127.0.0.1
	mica__e MICA_PG_PORT "$pgport"
	mica__e MICA_PG_DATA "$pg/data"
	mica__e MICA_PG_SOCKET_DIR "$pg/run"
	mica__e MICA_PG_PASSWORD_FILE "$dir/secrets/pg.password"
	mica__e MICA_PG_CONNINFO "host=127.0.0.1 port=$pgport dbname=mica user=mica passfile=$dir/secrets/pgpass sslmode=verify-full sslrootcert=$dir/ca/ca.pem"
	mica__e MICA_PG_RESTART "$(printf '%q ' bash "$MICA_LIB_SH" pg-restart "$dir")"
	mica__e MICA_REDIS_SOCKET "$dir/redis/redis.sock"
	mica__e MICA_REDIS_PORT "$(<"$dir/redis/port")"
	mica__e MICA_REDIS_RESTART "$(printf '%q ' bash "$MICA_LIB_SH" redis-restart "$dir")"
	mica__e MICA_REDIS_ADMIN_PASSWORD_FILE "$dir/secrets/redis-admin.password"
	for s in $MICA_SERVICES; do
		mica__e "MICA_REDIS_PASSWORD_FILE_$(mica_env_name "$s")" "$dir/secrets/redis-$s.password"
	done
	mica__e SOFTHSM2_CONF "$dir/hsm/softhsm2.conf"
	mica__e MICA_HSM_MODULE "$MICA_HSM_MODULE"
	mica__e MICA_HSM_TOKEN_LABEL "$MICA_HSM_TOKEN_LABEL"
	mica__e MICA_HSM_PIN_FILE "$dir/secrets/hsm-user.pin"
	mica__e MICA_HSM_SO_PIN_FILE "$dir/secrets/hsm-so.pin"
	mica__e MICA_KEYCENTER_DB_CONNINFO "$(mica_keycenter_conninfo "$dir")"
	mica__e MICA_ACCOUNT_DB_CONNINFO "$(mica_service_conninfo "$dir" account)"
	mica__e MICA_ACCOUNT_REDIS_SOCKET "$dir/redis/redis.sock"
	mica__e MICA_ACCOUNT_REDIS_PASSWORD_FILE "$dir/secrets/redis-account.password"
	mica__e MICA_ACCOUNT_RISK_ALTCHA_KEY_FILE "$dir/secrets/altcha.key"
	mica__e MICA_PUSH_DB_CONNINFO "$(mica_service_conninfo "$dir" push)"
	mica__e MICA_PUSH_REDIS_SOCKET "$dir/redis/redis.sock"
	mica__e MICA_PUSH_REDIS_PASSWORD_FILE "$dir/secrets/redis-push.password"
	mica__e MICA_CLOUDSYNC_DB_CONNINFO "$(mica_service_conninfo "$dir" cloudsync)"
	mica__e MICA_CLOUDSYNC_REDIS_SOCKET "$dir/redis/redis.sock"
	mica__e MICA_CLOUDSYNC_REDIS_PASSWORD_FILE "$dir/secrets/redis-cloudsync.password"
	unset -f mica__e
}

# mica_pg_service_roles DIR [DB]: give every service role the migrations created (mica_<s> for
# each s in MICA_SERVICES) a random password kept in DIR/secrets/pg-<s>.password and a passfile
# DIR/secrets/pgpass-<s>, so daemons log in as their own least-privilege role. Idempotent.
mica_pg_service_roles() {
	local dir="$1" s role have
	for s in $MICA_SERVICES; do
		role="mica_$s"
		have="$(MICA__PG_DB="${2:-mica}" mica_pg_psql "$dir" -Atqc "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" ||
			mica_die "cannot query PostgreSQL roles"
		[[ "$have" == 1 ]] || continue
		mica_secret_file "$dir/secrets/pg-$s.password"
		MICA__PG_DB="${2:-mica}" mica_pg_psql "$dir" -q -v ON_ERROR_STOP=1 \
			-v pw="$(<"$dir/secrets/pg-$s.password")" >/dev/null <<SQL || mica_die "cannot set the password of $role"
ALTER ROLE $role PASSWORD :'pw';
SQL
		(umask 077 && printf '*:*:*:%s:%s\n' "$role" "$(<"$dir/secrets/pg-$s.password")" >"$dir/secrets/pgpass-$s")
	done
}

# mica_service_conninfo DIR SERVICE [DB]: libpq conninfo of a service's role (passfile, TLS).
mica_service_conninfo() {
	printf 'host=127.0.0.1 port=%s dbname=%s user=mica_%s passfile=%s sslmode=verify-full sslrootcert=%s' \
		"$(mica_pg_port "$1")" "${3:-mica}" "$2" "$1/secrets/pgpass-$2" "$1/ca/ca.pem"
}

# mica_keycenter_conninfo DIR [DB]: the Key Center's role (see mica_service_conninfo).
mica_keycenter_conninfo() { mica_service_conninfo "$1" keycenter "${2:-mica}"; }

# ---------------------------------------------------------------------------------------------
# Executed as a script: the restart commands handed to tests (MICA_PG_RESTART, MICA_REDIS_RESTART).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	set -euo pipefail
	MICA_LOG_PREFIX="lib.sh"
	case "${1:-} ${2:+dir}" in
	"pg-restart dir") mica_pg_restart "$(cd "$2" && pwd)" ;;
	"redis-restart dir") mica_redis_restart "$(cd "$2" && pwd)" ;;
	*)
		echo "usage: $0 pg-restart DIR | redis-restart DIR" >&2
		exit 2
		;;
	esac
fi
