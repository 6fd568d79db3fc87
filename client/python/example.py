#!/usr/bin/env python3
"""Asks vlmd one question, optionally about images, and prints the answer as it streams.

    python3 example.py [--socket PATH] "Describe the picture." [image.jpg ...]
"""
import argparse
import sys

from vlmd_client import Client, ConnectError, VlmdError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", help="daemon socket (default: $VLMD_SOCKET, else /run/vlmd/vlmd.sock)")
    ap.add_argument("--chain", help="chain to ask (default: the daemon's default)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("prompt")
    ap.add_argument("images", nargs="*")
    args = ap.parse_args()

    images = []
    for path in args.images:
        with open(path, "rb") as f:
            images.append(f.read())
    try:
        with Client(args.socket) as c:
            print(f"connected to {c.server['server']} {c.server['version']}", file=sys.stderr)
            for piece in c.ask_stream(args.prompt, images=images, chain=args.chain, temperature=0,
                                      max_tokens=args.max_tokens):
                print(piece, end="", flush=True)
            r = c.last_result
            print(f"\n[{r['tokens_prompt']} prompt tokens, {r['tokens_generated']} generated in "
                  f"{r['timings']['total_ms']:.0f} ms, stop: {r['stop_reason']}]", file=sys.stderr)
    except ConnectError as e:
        print(e, file=sys.stderr)
        return 3
    except VlmdError as e:
        print(f"vlmd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
