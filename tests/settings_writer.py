"""A process that saves the staff settings as fast as it can, to be SIGKILLed by the durability test."""

import sys
from pathlib import Path

from kiosk.staff.account import write_settings

VERSIONS = [
    {"phrases": {f"line-{i}": " ".join([f"Version A, line {i}."] * 10) for i in range(60)}},
    {"phrases": {f"line-{i}": " ".join([f"Version B, line {i}."] * 10) for i in range(60)}},
]


def main(path: str) -> None:
    print("ready", flush=True)
    n = 0
    while True:
        write_settings(Path(path), VERSIONS[n % 2])
        n += 1


if __name__ == "__main__":
    main(sys.argv[1])
