"""Configuration files: system.conf (services and their privileges) in MINIX syntax."""

from hwl.config.system_conf import (
    KERNEL_CALLS,
    IoRange,
    MemoryRange,
    PciClass,
    PciDevice,
    ServiceConfig,
    SystemConf,
    SystemConfError,
    load,
    parse,
)

__all__ = [
    "KERNEL_CALLS",
    "IoRange",
    "MemoryRange",
    "PciClass",
    "PciDevice",
    "ServiceConfig",
    "SystemConf",
    "SystemConfError",
    "load",
    "parse",
]
