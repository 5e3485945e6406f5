"""Conformance of the E2B emulator with the official `e2b` Python SDK (pinned: e2b==2.63.0).

Reads E2B_API_URL, E2B_SANDBOX_URL, E2B_DOMAIN and E2B_API_KEY from the environment (the SDK
does too); never sets E2B_DEBUG, whose mode skips sandbox creation entirely. Exits non-zero on
the first mismatch, printing what differed. Talks only to the URLs it is given.

Setup (the Rust test `official_python_sdk_conforms` runs it with $E2B_SDK_PYTHON, default
/work/scratch/venv/bin/python):
    python3 -m venv /work/scratch/venv
    /work/scratch/venv/bin/pip install -r tests/sdk/requirements.txt   # or requirements.lock
"""

import json
import os
import sys
import time
import urllib.request

from e2b import Sandbox
from e2b.exceptions import AuthenticationException
from e2b.sandbox.commands.command_handle import CommandExitException


def check(cond, what):
    if not cond:
        print(f"conformance: FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"conformance: ok: {what}")


def emulator(method, path, body=None):
    """Calls the emulator's own control API (faults, stats) at E2B_API_URL."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        os.environ["E2B_API_URL"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def faults_and_auth():
    """The SDK (2.63) retries control-plane 429/502/503/504 itself, honouring Retry-After."""
    emulator("PUT", "/_emulator/faults", [
        {"endpoint": "create", "action": {"kind": "status", "status": 503}, "count": 1},
        {"endpoint": "create", "action": {"kind": "rate_limit", "retry_after_secs": 1}, "count": 1},
    ])
    before = emulator("GET", "/_emulator/stats").get("create", {}).get("calls", 0)
    started = time.monotonic()
    sbx = Sandbox.create(template="base", timeout=60)
    waited = time.monotonic() - started
    calls = emulator("GET", "/_emulator/stats")["create"]["calls"] - before
    check(calls == 3, f"the SDK retried an injected 503 and 429 on create (calls={calls})")
    check(waited >= 1.0, f"the SDK waited out Retry-After: 1 (waited {waited:.2f}s)")
    sbx.kill()
    emulator("DELETE", "/_emulator/faults")

    try:
        Sandbox.create(template="base", api_key="e2b_00000000")
        check(False, "a wrong API key raises AuthenticationException")
    except AuthenticationException:
        check(True, "a wrong API key raises AuthenticationException")


def main():
    for var in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"):
        check(bool(os.environ.get(var)), f"{var} is set")

    sbx = Sandbox.create(template="base", timeout=120, metadata={"suite": "conformance"})
    try:
        check(len(sbx.sandbox_id) == 21, f"sandbox id looks like e2b's ({sbx.sandbox_id})")
        check(sbx.is_running(), "is_running() is true for a new sandbox")

        r = sbx.commands.run("echo out; echo err 1>&2")
        check(r.stdout == "out\n", f"stdout is 'out\\n' (got {r.stdout!r})")
        check(r.stderr == "err\n", f"stderr is 'err\\n' (got {r.stderr!r})")
        check(r.exit_code == 0, f"exit code 0 (got {r.exit_code})")

        try:
            sbx.commands.run("echo before; exit 3")
            check(False, "non-zero exit raises CommandExitException")
        except CommandExitException as e:
            check(e.exit_code == 3, f"exit code 3 is reported (got {e.exit_code})")
            check(e.stdout == "before\n", f"stdout kept on failure (got {e.stdout!r})")

        r = sbx.commands.run("echo $GREETING", envs={"GREETING": "hi"})
        check(r.stdout == "hi\n", f"command envs are applied (got {r.stdout!r})")

        info = sbx.files.write("/home/user/dir/hello.txt", "hello sdk\n")
        check(info.path == "/home/user/dir/hello.txt", f"write returns the path (got {info.path!r})")
        got = sbx.files.read("/home/user/dir/hello.txt")
        check(got == "hello sdk\n", f"read returns what was written (got {got!r})")
        got = sbx.files.read("dir/hello.txt", format="bytes")
        check(bytes(got) == b"hello sdk\n", "relative paths resolve under /home/user")
        r = sbx.commands.run("cat dir/hello.txt")
        check(r.stdout == "hello sdk\n", "a command sees the written file")

        check(sbx.files.exists("/home/user/dir/hello.txt"), "files.exists finds the file")
        names = [e.name for e in sbx.files.list("/home/user/dir")]
        check(names == ["hello.txt"], f"files.list lists the directory (got {names})")

        listed = Sandbox.list().next_items()
        ids = [s.sandbox_id for s in listed]
        check(sbx.sandbox_id in ids, "Sandbox.list includes the sandbox")
        mine = [s for s in listed if s.sandbox_id == sbx.sandbox_id][0]
        check(mine.metadata.get("suite") == "conformance", f"list carries metadata (got {mine.metadata})")

        sbx.set_timeout(60)
        info = sbx.get_info()
        check(info.sandbox_id == sbx.sandbox_id, "get_info returns the sandbox")
    finally:
        killed = sbx.kill()
    check(killed is True or killed is None, f"kill succeeds (got {killed!r})")
    check(not sbx.is_running(), "is_running() is false after kill")
    check(Sandbox.kill(sbx.sandbox_id) is False, "killing it again reports False")
    faults_and_auth()
    print("conformance: all checks passed")


if __name__ == "__main__":
    main()
