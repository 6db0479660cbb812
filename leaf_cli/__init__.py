"""The `leaf` command line."""
