"""Ends what is left of an embedded local Ray once the search process that started it is gone.

Started by pool.py with the Ray session's directory and the search's pid; its stdin is a pipe
that only the search process holds, so reading it returns exactly when that process has ended,
however it ended (kill -9, the out-of-memory killer). Ray's own fate sharing has then killed the
GCS and the raylet, but the raylet's agents wait a minute on the dead GCS before they exit, and
workers a few seconds: every process that still has a file of that session open (each writes
its logs there; no other session's process does) is killed here at once. A search that stops
Ray itself writes a line first; then this just exits.

Standalone (stdlib and psutil), so it starts in a fraction of a second.
"""
import os
import sys

import psutil


def main(session_dir: str, search_pid: str) -> None:
    if sys.stdin.buffer.read():  # returns at end of file; a line first: Ray was stopped normally
        return
    inside = os.path.join(session_dir, "")
    for proc in psutil.process_iter():
        try:
            # The search itself may still be tearing down (its files are Ray's too): not it.
            if proc.pid != int(search_pid) and any(f.path.startswith(inside) for f in proc.open_files()):
                proc.kill()  # SIGKILL: orphans with nothing left to save
        except psutil.Error:  # gone meanwhile, or not ours to look at
            continue


if __name__ == "__main__":
    main(*sys.argv[1:])
