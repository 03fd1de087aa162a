"""libdriver: what hwl's drivers are built on. The driver core
(:mod:`hwl.driver.core`: incarnation, deferred queue, interrupt wait, live update,
announcement) under the two libraries: block drivers (:mod:`hwl.driver.blockdriver`,
their protocol in :mod:`hwl.driver.proto`) and NIC drivers
(:mod:`hwl.driver.netdriver`, the PCI side in :mod:`hwl.driver.nic`)."""
