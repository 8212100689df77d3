# shellcheck shell=bash
# bench/lib.sh - CPU accounting shared by the bench scripts (sourced, after deploy/lib.sh).
#
# bench_cpu_start NAME: puts this shell, and so everything it starts from now on (PostgreSQL
# backends and daemonised Redis included), into a fresh cgroup (v2, or v1 cpuacct) when the
# machine lets us; best effort. Other load on the machine does not count there, so CPU time per
# operation is a second, contention-free view of the same ratios the rates give.
# bench_cpu_ns: CPU time the cgroup used so far, in ns (0 without a cgroup).
# bench_cpu_stop: moves this shell back and removes the cgroup (call from the EXIT trap).
# bench_measure VAR CMD...: runs CMD, stores its output line in VAR with " cpu_ns=N" (the
# cgroup's CPU time over the run) appended.
# bench_cpu_per OPS LINE: CPU microseconds per operation of LINE ("n/a" without a cgroup).
bench__cg="" bench__cg_root="" bench__cg_v=""

bench_cpu_start() {
	if [[ -f /sys/fs/cgroup/cgroup.controllers && -w /sys/fs/cgroup ]]; then
		bench__cg_root=/sys/fs/cgroup bench__cg_v=2
	elif [[ -w /sys/fs/cgroup/cpuacct ]]; then
		bench__cg_root=/sys/fs/cgroup/cpuacct bench__cg_v=1
	fi
	if [[ -n "$bench__cg_root" ]] && mkdir "$bench__cg_root/$1.$$" 2>/dev/null; then
		bench__cg=$bench__cg_root/$1.$$
		echo $$ >"$bench__cg/cgroup.procs" 2>/dev/null || { rmdir "$bench__cg"; bench__cg=""; }
	fi
}

bench_cpu_ns() {
	if [[ -z "$bench__cg" ]]; then
		echo 0
	elif [[ "$bench__cg_v" == 2 ]]; then
		awk '$1 == "usage_usec" { printf "%d\n", $2 * 1000 }' "$bench__cg/cpu.stat"
	else
		cat "$bench__cg/cpuacct.usage"
	fi
}

bench_cpu_stop() {
	[[ -n "$bench__cg" ]] || return 0
	echo $$ >"$bench__cg_root/cgroup.procs" 2>/dev/null || true
	rmdir "$bench__cg" 2>/dev/null || true
	bench__cg=""
}

bench_measure() {
	local m_var=$1 m_before m_after m_out
	shift
	m_before=$(bench_cpu_ns)
	m_out=$("$@")
	m_after=$(bench_cpu_ns)
	printf -v "$m_var" '%s cpu_ns=%s' "$m_out" $((m_after - m_before))
}

bench_cpu_per() {
	local c
	c=$(sed -n 's/.* cpu_ns=\([0-9]*\).*/\1/p' <<<"$2")
	awk -v n="$1" -v c="${c:-0}" 'BEGIN { if (c > 0 && n > 0) printf "%.0f", c / n / 1000; else print "n/a" }'
}
