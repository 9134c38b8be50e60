#!/bin/sh
# Runs a test program as an MPI job on this machine:
#   tests/mpirun.sh RANKS PROGRAM [ARGS...]
# Skips (exit 77) when Open MPI's mpirun is not installed. As root Open MPI
# wants --allow-run-as-root; --oversubscribe lets more ranks than cores run
# (3 on a 2-core machine); --timeout ends a job whose ranks hang.
if ! command -v mpirun >/dev/null 2>&1; then
  echo "SKIP: mpirun not found; install Open MPI (openmpi-bin, libopenmpi-dev: scripts/install-deps) to run the MPI bootstrap test"
  exit 77
fi
ranks=$1
shift
root=""
[ "$(id -u)" -eq 0 ] && root=--allow-run-as-root
# Under AddressSanitizer (the CI's ASan run): Open MPI leaves allocations
# behind at exit, many in components it has already unloaded (LeakSanitizer
# names them "<unknown module>", so no suppression can match them). Leak
# checking is off for MPI jobs only; ASan's other checks stay on.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
export ASAN_OPTIONS
exec mpirun $root --oversubscribe --timeout 150 -x ASAN_OPTIONS -np "$ranks" "$@"
