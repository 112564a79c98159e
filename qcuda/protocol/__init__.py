"""The qcuda wire protocol: pure data, no I/O."""
