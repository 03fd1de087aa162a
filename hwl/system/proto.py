"""The system protocol, now one module per protocol in :mod:`hwl.proto` (``rs``, ``sef``,
``ds``, ``pci``); this name stays for existing imports."""

from hwl.proto.ds import (
    DRIVER_UP_BLK as DRIVER_UP_BLK,
)
from hwl.proto.ds import (
    DRIVER_UP_NET as DRIVER_UP_NET,
)
from hwl.proto.ds import (
    DS_BASE as DS_BASE,
)
from hwl.proto.ds import (
    DS_CHECK as DS_CHECK,
)
from hwl.proto.ds import (
    DS_DELETE as DS_DELETE,
)
from hwl.proto.ds import (
    DS_DRIVER_UP as DS_DRIVER_UP,
)
from hwl.proto.ds import (
    DS_MAX_KEY as DS_MAX_KEY,
)
from hwl.proto.ds import (
    DS_MAX_MEM as DS_MAX_MEM,
)
from hwl.proto.ds import (
    DS_PUBLISH as DS_PUBLISH,
)
from hwl.proto.ds import (
    DS_REQUEST_NAMES as DS_REQUEST_NAMES,
)
from hwl.proto.ds import (
    DS_RETRIEVE as DS_RETRIEVE,
)
from hwl.proto.ds import (
    DS_RETRIEVE_LABEL as DS_RETRIEVE_LABEL,
)
from hwl.proto.ds import (
    DS_SUBSCRIBE as DS_SUBSCRIBE,
)
from hwl.proto.ds import (
    DS_TYPES as DS_TYPES,
)
from hwl.proto.ds import (
    DsFlag as DsFlag,
)
from hwl.proto.pci import (
    PCI_ATTR_R8 as PCI_ATTR_R8,
)
from hwl.proto.pci import (
    PCI_ATTR_R16 as PCI_ATTR_R16,
)
from hwl.proto.pci import (
    PCI_ATTR_R32 as PCI_ATTR_R32,
)
from hwl.proto.pci import (
    PCI_ATTR_W8 as PCI_ATTR_W8,
)
from hwl.proto.pci import (
    PCI_ATTR_W16 as PCI_ATTR_W16,
)
from hwl.proto.pci import (
    PCI_ATTR_W32 as PCI_ATTR_W32,
)
from hwl.proto.pci import (
    PCI_BASE as PCI_BASE,
)
from hwl.proto.pci import (
    PCI_DEV_INFO as PCI_DEV_INFO,
)
from hwl.proto.pci import (
    PCI_DEV_NAME as PCI_DEV_NAME,
)
from hwl.proto.pci import (
    PCI_FIND_DEV as PCI_FIND_DEV,
)
from hwl.proto.pci import (
    PCI_FIRST_DEV as PCI_FIRST_DEV,
)
from hwl.proto.pci import (
    PCI_GET_BAR as PCI_GET_BAR,
)
from hwl.proto.pci import (
    PCI_IDS as PCI_IDS,
)
from hwl.proto.pci import (
    PCI_NEXT_DEV as PCI_NEXT_DEV,
)
from hwl.proto.pci import (
    PCI_RELEASE as PCI_RELEASE,
)
from hwl.proto.pci import (
    PCI_REQUEST_NAMES as PCI_REQUEST_NAMES,
)
from hwl.proto.pci import (
    PCI_RESERVE as PCI_RESERVE,
)
from hwl.proto.pci import (
    PCI_SLOT_NAME as PCI_SLOT_NAME,
)
from hwl.proto.rs import (
    RS_BASE as RS_BASE,
)
from hwl.proto.rs import (
    RS_CLONE as RS_CLONE,
)
from hwl.proto.rs import (
    RS_DOWN as RS_DOWN,
)
from hwl.proto.rs import (
    RS_EDIT as RS_EDIT,
)
from hwl.proto.rs import (
    RS_INIT as RS_INIT,
)
from hwl.proto.rs import (
    RS_LOOKUP as RS_LOOKUP,
)
from hwl.proto.rs import (
    RS_LU_PREPARE as RS_LU_PREPARE,
)
from hwl.proto.rs import (
    RS_REFRESH as RS_REFRESH,
)
from hwl.proto.rs import (
    RS_REQUEST_NAMES as RS_REQUEST_NAMES,
)
from hwl.proto.rs import (
    RS_RESTART as RS_RESTART,
)
from hwl.proto.rs import (
    RS_SHUTDOWN as RS_SHUTDOWN,
)
from hwl.proto.rs import (
    RS_STATUS as RS_STATUS,
)
from hwl.proto.rs import (
    RS_UNCLONE as RS_UNCLONE,
)
from hwl.proto.rs import (
    RS_UP as RS_UP,
)
from hwl.proto.rs import (
    RS_UPDATE as RS_UPDATE,
)
from hwl.proto.rs import (
    Policy as Policy,
)
from hwl.proto.rs import (
    UpdateFlag as UpdateFlag,
)
from hwl.proto.sef import (
    LU_STATE_CUSTOM_BASE as LU_STATE_CUSTOM_BASE,
)
from hwl.proto.sef import (
    SEF_BASE as SEF_BASE,
)
from hwl.proto.sef import (
    SEF_INIT as SEF_INIT,
)
from hwl.proto.sef import (
    SEF_LU_PREPARE as SEF_LU_PREPARE,
)
from hwl.proto.sef import (
    InitFlag as InitFlag,
)
from hwl.proto.sef import (
    InitType as InitType,
)
from hwl.proto.sef import (
    LuState as LuState,
)
