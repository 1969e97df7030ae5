#!/usr/bin/env bash
# Load-bench scenario `storm` (see docs/benchmarks.md): fleetgate side by side with the bare ack server.
exec "$(dirname "$0")/scenario.sh" storm "$@"
