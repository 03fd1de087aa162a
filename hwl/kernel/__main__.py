"""``python -m hwl.kernel CONFIG``: the kernel process (started by hwl.kernel.launcher).

CONFIG is JSON: ``run_dir``; ``link`` (the fds and addresses of a machine's link,
or null for a kernel without hardware); ``root`` (``{"fd": N}`` for a root that
holds the other end of a socketpair, or ``{"argv": [...]}`` to start one);
``root_label``; ``ready_fd`` (a pipe: "ready" or an error line, then closed).
"""

from __future__ import annotations

import json
import sys

from hwl.kernel.boot import main
from hwl.procs import set_title

if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    set_title("kernel", f"run dir {config['run_dir']}")
    sys.exit(main(config))
