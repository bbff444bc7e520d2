"""Stands in for a clawsvc process: spawns via GatewayProcess from a config file, prints the pid, then waits.

usage: spawner.py CONFIG_FILE   (token from env SPAWNER_TOKEN)
"""

import os
import sys
import threading

from clawsvc.config import load_config
from clawsvc.gateway.process import GatewayProcess
from clawsvc.logs import setup_logging

setup_logging("debug")
process = GatewayProcess(load_config(sys.argv[1]), os.environ["SPAWNER_TOKEN"], {}, lambda info: None)
print(f"gateway pid {process.start()}", flush=True)
threading.Event().wait()
