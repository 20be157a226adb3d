#!/usr/bin/env bash
# The frontier on a GPU machine (gsplat), for the demo scene and any scenes given, each scene's models trained
# JOBS at a time, all scenes at once; stops cleanly at SECONDS_LEFT (the frontier resumes where it stopped).
#
#   benchmarks/gpu_frontier.sh WHEEL_DIR|"" OUTPUT SECONDS_LEFT JOBS [SCENE ...] [-- FRONTIER OPTIONS]
set -uo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
wheels=$1 output=$2 seconds=$3 jobs=$4
shift 4
scenes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do scenes+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
source benchmarks/gpu_env.sh "$wheels" || exit 1
mkdir -p "$output"
[ -d "$output/demo/scene" ] || python3 -m distilled_splat scene --output "$output/demo/scene" --preset demo
left=$(( seconds - ($(date +%s) - began) ))
echo "gpu_frontier: ${left} s left for the frontiers"
pids=()
for scene in "$output/demo/scene" "${scenes[@]}"; do
    name=$(basename "$(dirname "$scene")")
    [ "$scene" = "$output/demo/scene" ] || name=$(basename "$scene")
    timeout -s INT "$left" python3 -m distilled_splat frontier --data "$scene" --output "$output/$name" \
        --device cuda --steps 1000 --jobs "$jobs" "$@" >"$output/$name.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; echo "gpu_frontier: a frontier ended with status $?"; done
echo "gpu_frontier: took $(( $(date +%s) - began )) s"
