"""The block-device protocol, now :mod:`hwl.proto.bdev`; this name stays for existing
imports."""

from hwl.proto.bdev import (
    BDEV_BASE as BDEV_BASE,
)
from hwl.proto.bdev import (
    BDEV_CLOSE as BDEV_CLOSE,
)
from hwl.proto.bdev import (
    BDEV_GATHER as BDEV_GATHER,
)
from hwl.proto.bdev import (
    BDEV_IOCTL as BDEV_IOCTL,
)
from hwl.proto.bdev import (
    BDEV_OPEN as BDEV_OPEN,
)
from hwl.proto.bdev import (
    BDEV_R_BIT as BDEV_R_BIT,
)
from hwl.proto.bdev import (
    BDEV_READ as BDEV_READ,
)
from hwl.proto.bdev import (
    BDEV_REQUEST_NAMES as BDEV_REQUEST_NAMES,
)
from hwl.proto.bdev import (
    BDEV_SCATTER as BDEV_SCATTER,
)
from hwl.proto.bdev import (
    BDEV_W_BIT as BDEV_W_BIT,
)
from hwl.proto.bdev import (
    BDEV_WRITE as BDEV_WRITE,
)
from hwl.proto.bdev import (
    DS_DRIVER_UP as DS_DRIVER_UP,
)
from hwl.proto.bdev import (
    IOCTL_FLUSH as IOCTL_FLUSH,
)
from hwl.proto.bdev import (
    IOCTL_GEOMETRY as IOCTL_GEOMETRY,
)
from hwl.proto.bdev import (
    is_request as is_request,
)
