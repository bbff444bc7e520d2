"""Exit codes of the clawsvc command (see the contract)."""

OK = 0
FAIL = 1
USAGE = 2
NOT_RUNNING = 3
CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 keeps a bad config from looping
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
