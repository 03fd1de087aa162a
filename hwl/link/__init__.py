"""The link to the guest stub: request ring, batches, guest memory, PCI config."""
