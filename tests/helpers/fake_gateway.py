"""A tiny stand-in gateway for process tests; behaviour from env (FAKE_*), never reads its argv.

FAKE_IGNORE_TERM=1      ignore SIGTERM
FAKE_EXIT=N             exit with status N right after printing
FAKE_GRANDCHILD=1       start a sleeping grandchild in our process group; prints "grandchild pid N"
FAKE_ESCAPEE=1          start a sleeping grandchild in its own session (as OpenClaw's spawn broker does) that
                        ignores our death; prints "escapee pid N"
FAKE_PRINT_TOKEN=1      print the token it got from OPENCLAW_GATEWAY_TOKEN
FAKE_STDOUT / FAKE_STDERR   text written at start; backslash escapes (\\xff, \\x00, \\n) become those bytes
FAKE_HUGE=N             then a line of N "x" on stdout (env values cannot hold 128 KiB)
Prints "ready" to stdout when set up; on SIGUSR2 prints "got SIGUSR2"; on SIGTERM exits 0.
"""

import codecs
import os
import signal
import subprocess
import sys
import threading

SLEEPER = [sys.executable, "-c", "import signal; signal.pause()"]


def main() -> None:
    env = os.environ
    if env.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGUSR2, lambda *_: print("got SIGUSR2", flush=True))
    for name, stream in (("FAKE_STDOUT", sys.stdout), ("FAKE_STDERR", sys.stderr)):
        if env.get(name):
            stream.buffer.write(codecs.escape_decode(env[name].encode())[0])
            stream.flush()
    if env.get("FAKE_HUGE"):
        sys.stdout.write("x" * int(env["FAKE_HUGE"]) + "\n")
        sys.stdout.flush()
    if env.get("FAKE_PRINT_TOKEN"):
        print(f"my token is {env['OPENCLAW_GATEWAY_TOKEN']}", flush=True)
    if env.get("FAKE_GRANDCHILD"):
        print(f"grandchild pid {subprocess.Popen(SLEEPER).pid}", flush=True)
    if env.get("FAKE_ESCAPEE"):
        child = subprocess.Popen(SLEEPER, start_new_session=True)
        print(f"escapee pid {child.pid}", flush=True)
    if "FAKE_EXIT" in env:
        sys.exit(int(env["FAKE_EXIT"]))
    print("ready", flush=True)
    threading.Event().wait()


main()
