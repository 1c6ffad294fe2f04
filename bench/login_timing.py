"""Benchmark: a refused sign-in takes as long for an unknown email as for a wrong password.

    .venv/bin/python bench/login_timing.py [--attempts 8] [--rounds 12]

Times the password check `login` runs (atlas_gql.auth.passwords.verify_password) for an
account that does not exist (a check against the dummy hash) and for a wrong password of an
existing account, interleaved, and prints both medians and their ratio (close to 1.0: the
answer time does not tell whether the email has an account). The test suite asserts the
cause instead of the clock: one bcrypt check at the server's cost on either path
(tests/auth/test_login.py)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas_gql.auth.passwords import hash_password_sync, verify_password


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    real_hash = hash_password_sync("the real password", rounds=args.rounds)
    unknown: list[float] = []
    wrong: list[float] = []
    for attempt in range(args.attempts):
        for password_hash, times in ((None, unknown), (real_hash, wrong)):
            started = time.perf_counter()
            matched = await verify_password(
                f"wrong-password-{attempt}", password_hash, dummy_rounds=args.rounds
            )
            times.append(time.perf_counter() - started)
            assert not matched
    unknown_ms = statistics.median(unknown) * 1000
    wrong_ms = statistics.median(wrong) * 1000
    print(f"bcrypt cost {args.rounds}, {args.attempts} attempts each (medians)")
    print(f"  unknown email : {unknown_ms:8.1f} ms")
    print(f"  wrong password: {wrong_ms:8.1f} ms")
    print(f"  ratio         : {unknown_ms / wrong_ms:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
