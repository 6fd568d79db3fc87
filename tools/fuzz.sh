#!/usr/bin/env bash
# Runs the libFuzzer targets of tests/fuzz for a while each and keeps what they find.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s; targets: gguf image proto ..., default all)
#
# SECONDS are wall seconds, or CPU seconds of the fuzzer process with FUZZ_BUDGET=cpu: then a watcher stops the
# target (SIGINT, so libFuzzer prints its final stats) once it has used that much CPU, however busy the machine
# is (run it under FUZZ_NICE=19 beside other work). Never pause a target with SIGSTOP: libFuzzer's per-input
# -timeout is wall-clock, so the input in flight is reported (and saved) as a timeout when it resumes.
#
# Configures and builds build-fuzz (clang, ASan + UBSan, coverage on the whole library), then runs each target in
# turn for the given wall time, with a working corpus in build-fuzz/fuzz-work/<target>/corpus seeded from
# tests/fuzz/corpus-<target>/ (the working corpus is kept between runs, so longer campaigns build on each other;
# new inputs are not copied back: minimise with -merge=1 before adding any to the repository). Crash, leak, timeout
# and out-of-memory inputs are copied to tests/fuzz/regressions/<target>/, where the ctest replay
# (ctest -L fuzz) runs them from then on; slow inputs (over 10 s, under the 25 s timeout) are counted, left in the
# work directory. Prints one line per target: executions, execs per wall and per CPU second, CPU time and
# findings.
#
# Environment: FUZZ_BUDGET=wall|cpu (default wall); FUZZ_NICE=N runs the targets under nice -n N; FUZZ_JOBS=N runs N targets at once (default 1); FUZZ_BUILD_DIR (default build-fuzz);
# FUZZ_NO_BUILD=1 skips the configure/build step; FUZZ_ARGS adds libFuzzer flags.
# Exit status: 0 when nothing was found, 1 when a target found something (or failed to run), 2 on a usage or
# build error.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
shift $(($# > 0 ? 1 : 0))
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_JOBS:-1}
budget=${FUZZ_BUDGET:-wall}
case $budget in wall | cpu) ;; *) echo "fuzz.sh: FUZZ_BUDGET must be wall or cpu" >&2; exit 2 ;; esac
nice_n=${FUZZ_NICE:-0}

all=()
for f in tests/fuzz/fuzz-*.c; do
    t=${f#tests/fuzz/fuzz-}
    all+=("${t%.c}")
done
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
    if [[ ! -f tests/fuzz/fuzz-$t.c ]]; then
        echo "fuzz.sh: no target '$t' (have: ${all[*]})" >&2
        exit 2
    fi
done

if [[ -z ${FUZZ_NO_BUILD:-} ]]; then
    cc=${CC:-clang}
    echo "== fuzz: configure + build $build ($cc)"
    cmake -S . -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLM_BUILD_FUZZERS=ON \
        -DVLM_CUDA=OFF -DVLM_SANITIZE_ADDRESS=ON -DVLM_SANITIZE_UNDEFINED=ON >"$build.configure.log" 2>&1 ||
        { cat "$build.configure.log"; exit 2; }
    cmake --build "$build" -j"$(nproc)" --target $(printf 'fuzz-%s ' "${targets[@]}") || exit 2
fi

# Per-target input size bound: large enough for the seeds that matter, small enough to keep runs fast.
max_len() {
    case $1 in
    image) echo 65536 ;;
    gguf | proto) echo 8192 ;;
    *) echo 4096 ;;
    esac
}

work=$root/$build/fuzz-work

# CPU seconds (user + system) used so far by process $1, or nothing once it is gone.
cpu_seconds() {
    local f
    f=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    f=${f##*) } # the command name may hold spaces; fields restart after its closing parenthesis
    set -- $f   # $12 = utime, $13 = stime (fields 14 and 15 of proc(5)), in clock ticks
    echo $(((${12} + ${13}) / $(getconf CLK_TCK)))
}

# Runs one target under its budget; its exit status is the fuzzer's (a CPU-budget stop counts as 0).
run_target() {
    local t=$1 bin=$2 w=$3
    shift 3
    local total=$secs
    [[ $budget == cpu ]] && total=0 # no wall limit: the watcher below stops it
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        nice -n "$nice_n" "$bin" -max_total_time="$total" -rss_limit_mb=2048 -timeout=25 -max_len="$(max_len "$t")" \
        -print_final_stats=1 -artifact_prefix="$w/artifacts/" ${FUZZ_ARGS:-} "$w/corpus" "$@" &
    local pid=$! used stopped=0
    if [[ $budget == cpu ]]; then
        while used=$(cpu_seconds "$pid"); do
            if ((used >= secs)); then
                stopped=1
                kill -INT "$pid" 2>/dev/null
                break
            fi
            sleep 5
        done
    fi
    wait "$pid"
    local rc=$?
    # libFuzzer exits with 72 (its -interrupted_exitcode) after a SIGINT: that is our own stop, not a finding.
    if ((stopped && rc == 72)); then
        rc=0
    fi
    return $rc
}
# One target: run, then collect artifacts and stats. Writes $work/<t>/summary.
fuzz_one() {
    local t=$1 bin=$root/$build/bin/fuzz-$t w=$work/$1
    local start=$SECONDS
    mkdir -p "$w/corpus" "$w/artifacts"
    rm -f "$w"/artifacts/*
    if [[ -d tests/fuzz/corpus-$t ]]; then
        cp -n tests/fuzz/corpus-$t/* "$w/corpus/" 2>/dev/null || true
    fi
    local extra=()
    [[ -d tests/fuzz/regressions/$t ]] && extra+=("tests/fuzz/regressions/$t")
    local rc
    TIMEFORMAT='%U %S'
    {
        time run_target "$t" "$bin" "$w" "${extra[@]}" >"$w/log" 2>&1
    } 2>"$w/cputime"
    rc=$?
    local cpu execs eps found
    cpu=$(awk '{printf "%.0f", $1 + $2}' "$w/cputime" 2>/dev/null)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$w/log" | tail -1 | grep -o '[0-9]*$')
    eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$w/log" | tail -1 | grep -o '[0-9]*$')
    found=0
    local slow=0
    for a in "$w"/artifacts/*; do
        [[ -f $a ]] || continue
        if [[ $(basename "$a") == slow-unit-* ]]; then # over 10 s but under -timeout: worth a look, not a failure
            slow=$((slow + 1))
            continue
        fi
        found=$((found + 1))
        mkdir -p "tests/fuzz/regressions/$t"
        cp "$a" "tests/fuzz/regressions/$t/"
    done
    if ((rc != 0 && found == 0)); then
        found=1 # died without an artifact (e.g. a crash in setup): still a failure
    fi
    # libFuzzer's execs/s is per wall second; per CPU second is the figure that does not depend on the machine's load.
    local per_cpu=?
    if [[ -n $execs && -n $cpu ]] && ((cpu > 0)); then
        per_cpu=$((execs / cpu))
    fi
    printf '%-12s execs %-10s execs/s %-7s execs/cpu-s %-7s cpu %5ss  wall %ss  crashes %s  slow %s  rc %s\n' \
        "$t" "${execs:-?}" "${eps:-?}" "$per_cpu" "${cpu:-?}" "$((SECONDS - start))" "$found" "$slow" "$rc" >"$w/summary"
}

echo "== fuzz: ${targets[*]}, ${secs} $budget seconds each, $jobs at a time (logs: $work/<target>/log)"
running=0
for t in "${targets[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
    fi
done
wait

status=0
echo "== fuzz results"
for t in "${targets[@]}"; do
    cat "$work/$t/summary"
    if ! grep -q 'crashes 0 ' "$work/$t/summary"; then
        status=1
        echo "-- $t: last lines of $work/$t/log:"
        grep -E 'ERROR|SUMMARY|==[0-9]+==|Test unit written|runtime error' "$work/$t/log" | tail -15
        echo "-- saved in tests/fuzz/regressions/$t/: $(ls "$work/$t/artifacts" | tr '\n' ' ')"
    fi
done
exit $status
