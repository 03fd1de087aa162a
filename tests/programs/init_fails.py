"""A service whose fresh init fails (ENOSYS): RS must not bring it up."""

from hwl.system import sef

sef.setcb_init_fresh(sef.init_fail)
sef.startup()
