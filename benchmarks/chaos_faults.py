"""The chaos soak's faults that need root: a full disk (a small tmpfs under the run dir) and a cut link
(a private network namespace per launch, where iptables drops the broker's port).

Both are probed once (:func:`probe`); a fault whose probe fails is skipped, with the reason in the soak's
JSON line (``skipped``). Neither touches the host: the tmpfs is mounted under the soak's own folder and
unmounted after its run, and iptables runs only inside the launch's own network namespace (loopback only,
so the run is the same as on the host's loopback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

TMPFS_SIZE = "256m"  # room for a tiny-bert run (checkpoints, negatives, logs) and its moved-aside copies
NETNS_PREFIX = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def _run(cmd: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def probe(out: Path) -> dict[str, str]:
    """``{fault: why it cannot be done here}`` for ``disk_full`` and ``link_cut`` (absent: available)."""
    skipped = {}
    if os.geteuid() != 0:
        return {"disk_full": "not root (mount tmpfs)", "link_cut": "not root (unshare --net, iptables)"}
    where = out / ".probe-tmpfs"
    where.mkdir(exist_ok=True)
    try:
        r = _run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)])
        if r.returncode != 0:
            skipped["disk_full"] = f"mount tmpfs not permitted: {r.stderr.strip()[:200]}"
        else:
            _run(["umount", str(where)])
    except (OSError, subprocess.SubprocessError) as exc:
        skipped["disk_full"] = f"mount: {exc}"
    finally:
        where.rmdir()
    if not all(shutil.which(t) for t in ("unshare", "nsenter", "iptables", "ip")):
        skipped["link_cut"] = "unshare, nsenter, iptables or ip not installed"
    else:
        try:
            r = _run([*NETNS_PREFIX, "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"])
            if r.returncode != 0:
                skipped["link_cut"] = f"iptables in a network namespace failed: {r.stderr.strip()[:200]}"
        except (OSError, subprocess.SubprocessError) as exc:
            skipped["link_cut"] = f"unshare --net: {exc}"
    return skipped


def mount_disk(where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(where)]).check_returncode()


def unmount_disk(where: Path) -> None:
    _run(["umount", "-l", str(where)])  # lazy: a straggling process with an open file does not block it


def fill_disk(where: Path, seconds: float) -> int:
    """Fill the tmpfs at ``where`` to the last byte with a ballast file for ``seconds``, then free it; return
    the bytes the ballast took."""
    ballast = where / ".chaos-ballast"
    written = 0
    try:
        with open(ballast, "wb", buffering=0) as fh:
            block = b"\0" * (1 << 20)
            while True:
                try:
                    written += fh.write(block)
                except OSError:  # ENOSPC: then the last bytes, smaller and smaller
                    if len(block) <= 512:
                        break
                    block = block[: len(block) // 2]
        time.sleep(seconds)
    finally:
        ballast.unlink(missing_ok=True)
    return written


def cut_link(launcher_pid: int, port: int, seconds: float) -> bool:
    """Drop every packet to the broker's ``port`` in the launcher's network namespace for ``seconds`` (both
    directions of every connection stall: TCP retransmits, nothing is reset); False when the launcher is gone."""
    try:  # held open, so the rule is removed even if the launcher ends meanwhile (its children keep the netns)
        fd = os.open(f"/proc/{launcher_pid}/ns/net", os.O_RDONLY)
    except OSError:
        return False
    ns = f"--net=/proc/{os.getpid()}/fd/{fd}"
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    try:
        if _run(["nsenter", ns, "iptables", "-I", *rule]).returncode != 0:
            return False
        try:
            time.sleep(seconds)
        finally:
            _run(["nsenter", ns, "iptables", "-D", *rule])
        return True
    finally:
        os.close(fd)
