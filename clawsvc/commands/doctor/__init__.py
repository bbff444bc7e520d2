"""`clawsvc doctor`: check-config's checks, one line each, then what only a look at the running host shows."""
