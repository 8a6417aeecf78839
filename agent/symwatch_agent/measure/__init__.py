"""What the agent measures: the layers of a model and their indicators, heads, units, spectra; the device (NVML, the allocator)."""
