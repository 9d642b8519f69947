"""The processes people run: the `herald` command line and its wiring."""
