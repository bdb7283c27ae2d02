# Sourced by the experiment scripts: wait for background lanes (processes writing one results store).
# wait_all PID...: waits for every one, even after a failure (no lane is left running unseen), then
# fails if any failed, so a script under `set -e` never builds its report from a partial store.
wait_all() {
  local failed=0 pid
  for pid in "$@"; do
    wait "$pid" || failed=1
  done
  return "$failed"
}
