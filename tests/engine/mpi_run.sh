#!/usr/bin/env bash
# Runs an MPI scenario in a fresh directory:  mpi_run.sh BINARY NP SCENARIO
# SCENARIO "rank-dies": a job saves, a second job loses rank 1 mid-save, and
# a third job checks that the first checkpoint loads and nothing partial of
# the second was published. SCENARIO "resume": a job of NP ranks trains and
# checkpoints, a job of NP/2 ranks resumes and checks bit-exactness;
# "resume-async" saves asynchronously.
set -u
bin=$1 np=$2 scenario=$3
# OpenMPI's own allocations (in plugins it unloads at exit) are reported as
# leaks under ASan; the engine's leak checking is done by the thread-rank
# tests, which run the same code.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
# OpenMPI is not built with ThreadSanitizer: when two threads use MPI
# (asynchronous saves), a request one thread's progress engine completes is
# copied into the other thread's buffer by OpenMPI, synchronized in ways
# ThreadSanitizer cannot see. Accesses made from inside OpenMPI are ignored;
# ckpt's own threads are checked by the thread-rank tests.
export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}ignore_noninstrumented_modules=1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mpirun_np() {
  mpirun --allow-run-as-root --oversubscribe -np "$1" --mca btl self,vader \
    --mca btl_vader_single_copy_mechanism none "${@:2}"
}
mpirun=(mpirun_np "$np")
case "$scenario" in
  rank-dies)
    "${mpirun[@]}" "$bin" save "$dir/good" || exit 1
    if "${mpirun[@]}" "$bin" save-die "$dir/dead" >/dev/null 2>&1; then
      echo "the job with a dead rank reported success"; exit 1
    fi
    "${mpirun[@]}" "$bin" check "$dir/good" "$dir/dead"
    ;;
  resume|resume-async)
    "${mpirun[@]}" "$bin" "${scenario/resume/train}" "$dir/ckpts" || exit 1
    mpirun_np $((np / 2)) "$bin" resume "$dir/ckpts"
    ;;
  *) "${mpirun[@]}" "$bin" "$scenario" "$dir" ;;
esac
