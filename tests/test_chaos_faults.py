"""The chaos soak's root-only faults (benchmarks/chaos_faults.py): a full disk and a cut link, each undone after.

Skipped where they cannot run (not root, no mount or network namespaces): the soak then skips them too.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers_refresh import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import chaos_faults  # noqa: E402


@pytest.fixture(scope="module")
def skipped(tmp_path_factory):
    return chaos_faults.probe(tmp_path_factory.mktemp("probe"))


def test_disk_full_fills_the_runs_tmpfs_then_frees_it(tmp_path, skipped):
    if "disk_full" in skipped:
        pytest.skip(skipped["disk_full"])
    disk = tmp_path / "disk"
    chaos_faults.mount_disk(disk)
    try:
        filler = threading.Thread(target=chaos_faults.fill_disk, args=(disk, 3.0))
        filler.start()
        wait_until(lambda: (disk / ".chaos-ballast").exists() and not _fits(disk, 4096), 30, "a full disk")
        with pytest.raises(OSError) as exc:
            (disk / "x").write_bytes(b"\0" * 65536)
        assert exc.value.errno == errno.ENOSPC
        filler.join(30)
        (disk / "x").write_bytes(b"\0" * 65536)  # freed
        assert not (disk / ".chaos-ballast").exists()
    finally:
        chaos_faults.unmount_disk(disk)


def _fits(folder: Path, n: int) -> bool:
    import os

    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize >= n


CONNECTOR = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
for _ in sys.stdin:
    try:
        socket.create_connection(("127.0.0.1", srv.getsockname()[1]), timeout=1.0).close()
        print("ok", flush=True)
    except OSError:
        print("fail", flush=True)
"""


def test_cut_link_drops_the_port_in_the_runs_namespace_only(skipped):
    if "link_cut" in skipped:
        pytest.skip(skipped["link_cut"])
    child = subprocess.Popen([*chaos_faults.NETNS_PREFIX, sys.executable, "-c", CONNECTOR], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)

    def ask() -> str:
        child.stdin.write("go\n")
        child.stdin.flush()
        return child.stdout.readline().strip()

    try:
        port = int(child.stdout.readline())
        assert ask() == "ok"
        cut = threading.Thread(target=chaos_faults.cut_link, args=(child.pid, port, 4.0))
        cut.start()
        rules = ["nsenter", f"--net=/proc/{child.pid}/ns/net", "iptables", "-S", "INPUT"]
        wait_until(lambda: f"--dport {port}" in subprocess.run(rules, capture_output=True, text=True).stdout, 30,
                   "the rule in the namespace")
        assert f"--dport {port}" not in subprocess.run(["iptables", "-S", "INPUT"], capture_output=True,
                                                       text=True).stdout  # the host's rules are untouched
        assert ask() == "fail"
        cut.join(30)
        assert ask() == "ok"  # the link is back
    finally:
        child.kill()
        child.wait()
