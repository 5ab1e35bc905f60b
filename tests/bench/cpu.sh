# Sourced by the bench scripts (bench_sip, bench_conf, bench_http): what a process has run.
# cpu_ns PID: nanoseconds on a CPU of every thread of PID and of its children, from
# /proc/<pid>/task/*/schedstat. utime+stime in /proc/<pid>/stat count 10 ms ticks: a point
# of 1-2 CPU-seconds moved 10-15% between runs, and processes that wake on the timer tick
# are overcounted (Kamailio's by about a fifth, sampled both ways over the same 10 s).
# Summed with %.0f: mawk's %d stops at 2^31.
cpu_ns() {
    local c
    for c in "$1" $(ps --ppid "$1" -o pid= 2>/dev/null); do
        cat /proc/"$c"/task/*/schedstat 2>/dev/null
    done | awk '{s += $1} END {printf "%.0f", s}'
}
