"""The inspector page's screenshot for the README, taken in headless Debian chromium.

    .venv/bin/python scripts/inspector_screenshot.py --model smollm2-135m \
        --adapter sport=runs/sport-raw/adapter --out docs/inspector.png

Starts `python -m loralab.serve.inspect` on a free loopback port, enters the prompt and the
continuation, clicks the token `--position`, and saves the page.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", required=True, help="NAME=FOLDER")
    ap.add_argument("--prompt", default="Who won the game on Sunday?")
    ap.add_argument("--continuation", default="The Bears beat the Lions 24-17 with a late field goal.")
    ap.add_argument("--position", type=int, default=2)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--out", default="docs/inspector.png")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "loralab.serve.inspect", "--model", a.model, "--adapter", a.adapter,
                             "--datasets", "/tmp/inspector-shot", "--port", str(port)])
    url = f"http://127.0.0.1:{port}/inspect/"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "api/state", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.wait_for_selector("#adapter-list .adapter")
            page.eval_on_selector("#adapter-list .adapter input[type=range]",
                                  f"el => {{ el.value = '{a.strength}'; el.dispatchEvent(new Event('input')); }}")
            page.fill("#prompt", a.prompt)
            page.fill("#continuation", a.continuation)
            page.click("#run")
            page.wait_for_selector(".tok", timeout=120_000)
            page.click(f".tok[data-i='{a.position}']")
            page.wait_for_selector(".dist[data-side=base] .bar-row", timeout=120_000)
            page.screenshot(path=a.out, full_page=False)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
