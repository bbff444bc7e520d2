"""The gateway child and the protocol-4 link to it: spawn, stop, output, ports, connection, readiness."""
