#!/bin/sh
# Recovery script for RS tests: logs its arguments, then takes the service down
# for good (`service down LABEL`) and logs that command's exit status.
calls="$HWL_RUN_DIR/recovery.calls"
echo "called $*" >>"$calls"
bin="$(dirname "$(command -v python)")"
if [ -x "$bin/minix-service" ]; then
	"$bin/minix-service" down "$1"
else
	python -m hwl.cli.service down "$1"
fi
echo "result $1 $?" >>"$calls"
