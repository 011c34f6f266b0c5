#!/usr/bin/env python3
"""Small helpers tests/test_systemd.py runs inside the container (standard library only).

    inside.py files FOLDER COUNT SIZE [--age SECONDS] [--prefix NAME]   write COUNT files
    inside.py get URL [--wait SECONDS]                                  print a URL's body
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request


def write_files(folder: str, count: int, size: int, age: float, prefix: str) -> None:
    os.makedirs(folder, exist_ok=True)
    stamp = time.time() - age
    for index in range(count):
        path = os.path.join(folder, f"{prefix}{index:04d}.mp4")
        with open(path, "wb") as handle:          # closed after writing: the watcher's signal
            handle.write(os.urandom(size))
        if age:
            os.utime(path, (stamp, stamp))


def get(url: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                sys.stdout.write(answer.read().decode())
                return 0
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                print(f"{url}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    files = sub.add_parser("files")
    files.add_argument("folder")
    files.add_argument("count", type=int)
    files.add_argument("size", type=int)
    files.add_argument("--age", type=float, default=0.0)
    files.add_argument("--prefix", default="clip-")
    fetch = sub.add_parser("get")
    fetch.add_argument("url")
    fetch.add_argument("--wait", type=float, default=0.0)
    args = parser.parse_args()
    if args.command == "files":
        write_files(args.folder, args.count, args.size, args.age, args.prefix)
        return 0
    return get(args.url, args.wait)


if __name__ == "__main__":
    sys.exit(main())
