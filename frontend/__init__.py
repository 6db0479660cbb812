"""The browser UI: static files the API serves at `/` (a package so wheels include them)."""
