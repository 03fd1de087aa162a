#!/bin/sh
# Recovery script for RS tests: RS runs it as `restart.sh LABEL REASON REPETITION`
# with HWL_RUN_DIR set. It logs its arguments, restarts the service through the
# `service` command and logs that command's exit status.
calls="$HWL_RUN_DIR/recovery.calls"
echo "called $*" >>"$calls"
bin="$(dirname "$(command -v python)")"
if [ -x "$bin/minix-service" ]; then
	"$bin/minix-service" restart "$1"
else
	python -m hwl.cli.service restart "$1"
fi
echo "result $1 $?" >>"$calls"
