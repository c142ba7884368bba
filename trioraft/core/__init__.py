"""The sans-IO Raft core: pure, deterministic, no trio, no I/O, no clock."""
